"""Task heads: wrap a Hugging Face model so it takes positional tensors and returns a tuple.

``torch.export`` and ONNX want a flat signature and flat outputs; these wrappers give every
task one, and pick what verification compares (pooled sentence embeddings for encoders,
logits for classifiers and language models).
"""

from __future__ import annotations

import torch
from torch import nn

#: task -> (transformers auto class, output names)
TASKS: dict[str, tuple[str, list[str]]] = {
    "sentence-embedding": ("AutoModel", ["sentence_embedding"]),
    "feature-extraction": ("AutoModel", ["last_hidden_state"]),
    "sequence-classification": ("AutoModelForSequenceClassification", ["logits"]),
    "image-classification": ("AutoModelForImageClassification", ["logits"]),
    "causal-lm": ("AutoModelForCausalLM", ["logits"]),
}

POOLING_MODES = ("mean", "cls", "max")


class TaskModule(nn.Module):
    """``forward(*inputs)`` with inputs in ``input_names`` order, returning a tuple."""

    def __init__(self, model: nn.Module, input_names: list[str], output: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output = output
        self.extra = {"use_cache": False} if getattr(model.config, "use_cache", False) else {}

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = dict(zip(self.input_names, inputs, strict=True))
        out = self.model(**kwargs, **self.extra, return_dict=True)
        return (out[self.output],)


class SentenceEmbedding(TaskModule):
    """Token states pooled as sentence-transformers' Pooling (+ Normalize) modules do."""

    def __init__(
        self, model: nn.Module, input_names: list[str], pooling: str, normalize: bool
    ) -> None:
        super().__init__(model, input_names, "last_hidden_state")
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        (hidden,) = super().forward(*inputs)
        mask = dict(zip(self.input_names, inputs, strict=True)).get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        return (pooled,)
