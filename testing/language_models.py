"""Tiny decoder language models with a real tokenizer, for tests and benchmarks.

The tokenizer is a byte-level BPE trained in a second on the standard library's docstrings
(the text the ``stdlib-docstrings`` source serves), so verification text tokenizes inside
the vocabulary; the models are random-weight configs of the families whose KV cache fxopt
captures, small (``config``) or of a real model's shape (``SHAPES``, for speed and memory).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch

VOCAB = 384
FAMILIES = ("llama", "qwen2", "mistral", "phi3", "gpt2")
#: real models' shapes (random weights): where speed and memory are measured
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2-0.5b": (
        "qwen2",
        {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
        },
    ),
    "llama-3.2-1b": (
        "llama",
        {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
            "tie_word_embeddings": True,
        },
    ),
}


@cache
def tokenizer(vocab: int = VOCAB):
    """A byte-level BPE of ``vocab`` tokens; ``<eos>`` (id 0) ends text and pads it."""
    from fxopt.plugins.data.sources import stdlib_sentences
    from fxopt.plugins.huggingface.builtin_lm import train_tokenizer

    return train_tokenizer(stdlib_sentences()[:2000], vocab)


def config(family: str, **sizes: Any):
    """A tiny random config of ``family`` (2 layers, hidden 64, grouped-query attention)."""
    import transformers as t

    common = {"vocab_size": VOCAB, "eos_token_id": 0, "bos_token_id": 0, "pad_token_id": 0}
    if family == "gpt2":
        return t.GPT2Config(
            **{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, **common, **sizes}
        )
    base = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }
    kinds = {"llama": t.LlamaConfig, "qwen2": t.Qwen2Config, "mistral": t.MistralConfig}
    kinds["phi3"] = t.Phi3Config
    return kinds[family](**{**base, **common, **sizes})


def save_causal_lm(path: Path, family: str = "llama", seed: int = 0, **sizes: Any) -> Path:
    """A random ``family`` language model (``sizes`` override the tiny config; ``SHAPES``
    gives real ones) and the shared tokenizer, saved in ``path``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(family, **sizes)).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer().save_pretrained(path)
    return path


#: a recipe for the tiny models (``config``): prompts up to 48 tokens, a cache up to 64,
#: verified on 8 ``stdlib-docstrings`` texts with the language-model metrics; tests lay
#: their passes, target and budget over it
RECIPE: dict[str, Any] = {
    "schema_version": 1,
    "model": {
        "task": "causal-lm",
        "dims": {
            "sequence": {"min": 1, "opt": 32, "max": 48},
            "past_sequence": {"min": 0, "opt": 32, "max": 64},
        },
    },
    "data": {
        "verification": {
            "source": "stdlib-docstrings",
            "samples": 8,
            "batch_size": 4,
            "sequence_length": 32,
        }
    },
    "target": {"backend": "onnxruntime"},
    "verify": {"generation_tokens": 8, "latency": False},
}
