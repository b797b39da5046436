"""Decoder language models with a KV cache: one graph for the prompt and for every new token.

The captured model takes the cache as tensors and returns it grown by the new tokens, under
the names Optimum and ONNX Runtime GenAI use, so the artifact generates like theirs do::

    inputs   input_ids [batch, sequence]   attention_mask [batch, past_sequence+sequence]
             position_ids [batch, sequence]
             past_key_values.N.key / .value [batch, kv_heads, past_sequence, head_dim]
    outputs  logits [batch, sequence, vocab]
             present.N.key / .value [batch, kv_heads, past_sequence+sequence, head_dim]

The prompt runs with an empty cache (``past_sequence`` = 0), each later token with
``sequence`` = 1. The causal mask is built here from the 2-D ``attention_mask`` as plain
tensor arithmetic and handed to the model in 4-D: transformers' own mask builder adds
shape guards that ``torch.export`` turns into a minimum cache length.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxopt.engine.config import DimRange
from fxopt.engine.errors import ModelError
from fxopt.engine.specs import IndexRange, InputSpec

#: ``config.json``'s ``model_type`` values whose cache this module captures (and tests)
SUPPORTED = ("gpt2", "llama", "mistral", "phi3", "qwen2")
CACHE_AXES = "past_sequence"
MASK_AXES = "past_sequence+sequence"


def check_supported(config: dict[str, Any], config_file: Path) -> None:
    """Refuse, before any work, an architecture whose cache is not known to export."""
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        raise ModelError(
            f"causal-lm with a KV cache supports the architectures {', '.join(SUPPORTED)}; "
            f"this model is {kind!r}",
            file=config_file,
            field="model_type",
            fix='use one of those architectures, or set [model] task = "generic" to '
            "optimize it as a plain graph (logits only, no cache)",
        )


def check_tokenizer(tokenizer: Any, path: Path) -> None:
    """A language model's tokenizer must name its end-of-text token: generation stops on it,
    and batches of texts are padded with it."""
    if tokenizer.eos_token is None:
        raise ModelError(
            "the tokenizer has no end-of-text token: generation could not stop, nor texts "
            "of different lengths be batched",
            file=path / "tokenizer_config.json",
            field="eos_token",
            fix='set "eos_token" (e.g. "</s>" or "<|endoftext|>", a token of its vocabulary)',
        )


def cache_layout(config: dict[str, Any]) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of the cache, from config.json."""
    layers = int(config.get("num_hidden_layers") or config.get("n_layer"))
    heads = int(config.get("num_attention_heads") or config.get("n_head"))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config.get("hidden_size") or config.get("n_embd"))
    head_dim = int(config.get("head_dim") or hidden // heads)
    return layers, kv_heads, head_dim


def cache_names(layers: int, prefix: str = "past_key_values") -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def propose(config: dict[str, Any], config_file: Path) -> tuple[list[InputSpec], dict, list[str]]:
    """The inputs, their axes' ranges and the output names of the model with its cache."""
    layers, kv_heads, head_dim = cache_layout(config)
    vocab = int(config.get("vocab_size", 2))
    context = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    ids = IndexRange(vocab, str(config_file), "vocab_size")
    inputs = [
        InputSpec("input_ids", "int64", ("batch", "sequence"), 0, vocab, ids),
        InputSpec("attention_mask", "int64", ("batch", MASK_AXES), 1, 2),
        InputSpec("position_ids", "int64", ("batch", "sequence"), 0, 1),
    ]
    shape = ("batch", kv_heads, CACHE_AXES, head_dim)
    inputs += [InputSpec(name, "float32", shape, -1.0, 1.0) for name in cache_names(layers)]
    # the prompt and the cache share the context: each may take up to half of it
    half = max(2, context // 2)
    dims = {
        "batch": DimRange(min=1, opt=4, max=64),
        "sequence": DimRange(min=1, opt=min(64, half), max=half),
        CACHE_AXES: DimRange(min=0, opt=min(64, half), max=half),
    }
    return inputs, dims, ["logits", *cache_names(layers, "present")]


def model_axes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The cache's key/value heads and head_dim, in and out: sized by the model, so pruning
    key/value heads shrinks them with the model (the past's inputs and the present's
    outputs), where every other input and output axis keeps its size."""
    layers = cache_layout(config)[0]
    names = cache_names(layers) + cache_names(layers, "present")
    return {name: (1, 3) for name in names}


class CausalLMWithCache(nn.Module):
    """``forward(input_ids, attention_mask, position_ids, *past)`` → ``(logits, *present)``."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        total, new = attention_mask.shape[1], input_ids.shape[1]
        keys = torch.arange(total, device=input_ids.device)
        queries = torch.arange(new, device=input_ids.device) + (total - new)
        causal = keys[None, :] <= queries[:, None]
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def with_cache_inputs(
    tokenize: Callable[[list[str], int], dict[str, torch.Tensor]], config: dict[str, Any]
) -> Callable[[list[str], int], dict[str, torch.Tensor]]:
    """Text → the prompt's inputs: its ids and mask, positions, and an empty cache."""
    layers, kv_heads, head_dim = cache_layout(config)

    def tokenized(texts: list[str], sequence_length: int) -> dict[str, torch.Tensor]:
        out = tokenize(texts, sequence_length)
        mask = out["attention_mask"]
        out["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        empty = torch.zeros(len(texts), kv_heads, 0, head_dim)
        out.update({name: empty for name in cache_names(layers)})
        return out

    return tokenized
