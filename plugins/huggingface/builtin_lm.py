"""``builtin:stdlib-lm``: a small language model fxopt trains itself, so the language-model
recipes run from a fresh clone with no model to download.

A Llama (grouped-query attention 4/2, RoPE, RMSNorm, SwiGLU; 2 layers, width 128, 0.5 M
parameters) with a byte-level BPE tokenizer of 1,024 tokens, trained from a fixed seed on one
thread for :data:`STEPS` steps on the ``stdlib-sentences`` text (the standard library's
docstring sentences), never on ``stdlib-docstrings``, which the recipes verify on: there its
perplexity is about a fifth of a unigram model's (``fit_report``). About a minute on one
core, once per process.

The trained model is saved, as any Hugging Face model directory is, into a temporary
directory of this process's own (removed when the process ends) and loaded from there by the
Hugging Face loader: the same capture, cache and assets (config.json, tokenizer) as a model
the user brings, so ``optimize generate`` works on the output.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path

import torch

from fxopt.plugins.data.builtin_models import LANGUAGE_MODEL, deterministic
from fxopt.plugins.data.sources import stdlib_sentence_corpus

VOCAB = 1024
STEPS = 400
BATCH = 16
WINDOW = 64
LR = 3e-3
EOS = "<eos>"


def train_tokenizer(texts: list[str], vocab: int = VOCAB):
    """A byte-level BPE of ``vocab`` tokens; ``<eos>`` (id 0) ends a text and pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)


def config(vocab: int = VOCAB):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=True,
    )


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """Every text's ids, each followed by ``<eos>``, end to end."""
    ids: list[int] = []
    for encoded in tokenizer(texts)["input_ids"]:
        ids += [*encoded, tokenizer.eos_token_id]
    return torch.tensor(ids)


def train(seed: int = 0, steps: int = STEPS):
    """``(model, tokenizer)``: next-token training on random windows of the text, AdamW with
    a warm-up and a cosine decay to a tenth."""
    from transformers import AutoModelForCausalLM

    texts = stdlib_sentence_corpus()
    tokenizer = train_tokenizer(texts)
    ids = token_stream(tokenizer, texts)
    with deterministic(seed):
        model = AutoModelForCausalLM.from_config(config())
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for step in range(steps):
            warm = min(1.0, (step + 1) / 30)
            decay = 0.1 + 0.45 * (1 + math.cos(math.pi * step / steps))
            for group in optimizer.param_groups:
                group["lr"] = LR * warm * decay
            starts = torch.randint(0, len(ids) - WINDOW - 1, (BATCH,), generator=generator)
            window = torch.stack([ids[s : s + WINDOW + 1] for s in starts.tolist()])
            logits = model(input_ids=window[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), tokenizer


@functools.cache
def model_dir() -> Path:
    """The trained model as a Hugging Face directory, written once per process into a
    temporary directory of its own, removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix=f"fxopt-{LANGUAGE_MODEL}-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    model, tokenizer = train()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def fit_report(texts: list[str]) -> dict[str, float]:
    """Perplexity of the trained model on ``texts`` (in windows, by the ``causal-lm`` task's
    own measure) next to a unigram model of its training text: what shows it is a language
    model (used by its test)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fxopt.plugins.tasks import perplexity

    model = AutoModelForCausalLM.from_pretrained(model_dir()).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    held = token_stream(tokenizer, texts)
    # windows overlapping by one token, so that every token after the first is predicted once
    windows = [
        {"input_ids": held[start : start + WINDOW + 1][None]}
        for start in range(0, len(held) - WINDOW - 1, WINDOW)
    ]
    with torch.no_grad():
        logits = [[model(input_ids=w["input_ids"]).logits.numpy()] for w in windows]
    train_ids = token_stream(tokenizer, stdlib_sentence_corpus())
    counts = torch.bincount(train_ids, minlength=len(tokenizer)).double() + 1.0
    unigram = -(counts / counts.sum()).log()[held].mean()
    return {
        "perplexity": perplexity(windows, logits),
        "unigram_perplexity": math.exp(float(unigram)),
    }
