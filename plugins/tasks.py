"""The built-in tasks, registered through ``fxopt_register_tasks`` as a third party's would be.

Each says what its kind of model is judged on (see :class:`fxopt.engine.task.Task`):
sentence embeddings by their cosine, token states by the cosine of their mean under the
attention mask, classifiers and language models by their logits and top-1 agreement.
"""

from __future__ import annotations

import numpy as np

from fxopt.engine import hookimpl
from fxopt.engine.task import Task


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
    """Next-token logits (no KV cache yet): top-1 agreement is the share of positions whose
    most likely next token is unchanged."""

    name = "causal-lm"
    classifies = True


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
