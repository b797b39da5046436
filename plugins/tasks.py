"""The built-in tasks, registered through ``fxopt_register_tasks`` as a third party's would be.

Each says what its kind of model is judged on (see :class:`fxopt.engine.task.Task`):
sentence embeddings by their cosine, token states by the cosine of their mean under the
attention mask, classifiers and language models by their logits and top-1 agreement.
"""

from __future__ import annotations

import numpy as np

from fxopt.engine import hookimpl
from fxopt.engine.data import Batch
from fxopt.engine.errors import DataError
from fxopt.engine.task import Evidence, Task
from fxopt.plugins.huggingface.generation import PAST, Generator


class SentenceEmbedding(Task):
    """One pooled (and normalized) vector per sentence: its cosine is the fidelity."""

    name = "sentence-embedding"


class FeatureExtraction(Task):
    """Token states, compared as their mean over the real (unpadded) tokens of a sample."""

    name = "feature-extraction"

    def vectors(self, output: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if mask is not None and output.ndim == 3:
            weights = mask[..., None].astype(np.float64)
            output = (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return super().vectors(output, mask)


class SequenceClassification(Task):
    name = "sequence-classification"
    classifies = True


class ImageClassification(Task):
    name = "image-classification"
    classifies = True


class CausalLM(Task):
    """A language model: next-token logits (top-1 agreement: the share of positions whose
    most likely next token is unchanged), perplexity on the verification text, and, when
    the model has a KV cache, the agreement of greedy generation.

    ``perplexity_increase`` is the artifact's perplexity over the original's, minus one;
    ``generation_agreement`` the share of ``generation_tokens`` greedy tokens, from the
    first ``generation_prompts`` verification texts cut to half their length, that equal
    the original model's token for token (after the first difference the two continue
    from different texts, so the count stops there).
    """

    name = "causal-lm"
    classifies = True
    compared_outputs = 1  # the logits; the cache is judged by generation agreement

    def judge(self, evidence: Evidence) -> dict[str, float]:
        reference = perplexity(evidence.batches, evidence.reference)
        candidate = perplexity(evidence.batches, evidence.candidate)
        metrics = {
            "perplexity_reference": reference,
            "perplexity": candidate,
            "perplexity_increase": candidate / reference - 1.0,
        }
        settings = evidence.settings
        prompts = _prompts(evidence.batches, settings.generation_prompts)
        if prompts and any(n.startswith(PAST) for n in evidence.candidate_runner.input_names):
            candidate_batches = evidence.candidate_batches or evidence.batches
            ours = Generator(evidence.reference_runner, _cache_shape(evidence.batches[0]))
            theirs = Generator(evidence.candidate_runner, _cache_shape(candidate_batches[0]))
            agree = []
            for prompt in prompts:
                want = ours.generate(prompt, settings.generation_tokens).tokens
                got = theirs.generate(prompt, settings.generation_tokens).tokens
                pairs = enumerate(zip(want, got, strict=True))
                same = next((i for i, (a, b) in pairs if a != b), len(want))
                agree.append(same / len(want))
            metrics["generation_agreement"] = float(np.mean(agree))
        return metrics


def perplexity(batches: list[Batch], outputs: list[list[np.ndarray]]) -> float:
    """exp of the mean negative log-likelihood of each real next token (first output:
    logits ``[batch, sequence, vocab]``; the mask says which tokens are real)."""
    total, count = 0.0, 0
    for batch, out in zip(batches, outputs, strict=True):
        ids = batch["input_ids"].numpy()
        mask = np.ones_like(ids)
        if "attention_mask" in batch:  # over the cached tokens too: the last columns are ids'
            mask = batch["attention_mask"].numpy()[:, -ids.shape[1] :]
        logits = out[0][:, :-1].astype(np.float64)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        targets = ids[:, 1:]
        picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        real = mask[:, 1:].astype(bool) & mask[:, :-1].astype(bool)
        total -= float(picked[real].sum())
        count += int(real.sum())
    if not count:
        raise DataError(
            "every verification text is shorter than two tokens: perplexity has no next token "
            "to predict",
            field="data.verification",
            fix="use longer texts (or a larger sequence_length) for the verification set",
        )
    return float(np.exp(total / count))


def _prompts(batches: list[Batch], count: int) -> list[list[int]]:
    """The first ``count`` verification texts, each cut to half its real tokens."""
    prompts = []
    for batch in batches:
        mask = batch.get("attention_mask")
        for i, row in enumerate(batch["input_ids"].tolist()):
            real = int(mask[i, -len(row) :].sum()) if mask is not None else len(row)
            if len(prompts) < count and real >= 2:
                prompts.append(row[: max(1, real // 2)])
    return prompts


def _cache_shape(batch: Batch) -> tuple[int, int]:
    """``(kv_heads, head_dim)`` of the cache, from the (empty) cache the batch carries."""
    tensor = next(v for k, v in batch.items() if k.startswith(PAST))
    return int(tensor.shape[1]), int(tensor.shape[3])


BUILTIN = (
    Task,
    SentenceEmbedding,
    FeatureExtraction,
    SequenceClassification,
    ImageClassification,
    CausalLM,
)


@hookimpl
def fxopt_register_tasks(registry) -> None:
    for task in BUILTIN:
        registry.register(task.name, task)
