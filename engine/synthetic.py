"""Synthetic inputs from input specs: for tracing, and for recipes without real data."""

from __future__ import annotations

import torch

from .specs import InputSpec


def synthetic_inputs(
    specs: list[InputSpec], sizes: dict[str, int], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One batch of random inputs in each input's declared value range."""
    out = {}
    for spec in specs:
        shape = spec.concrete_shape(sizes)
        if spec.torch_dtype.is_floating_point:
            low = spec.low if spec.low is not None else 0.0
            high = spec.high if spec.high is not None else 1.0
            value = torch.rand(shape, generator=generator) * (high - low) + low
            out[spec.name] = value.to(spec.torch_dtype)
        elif spec.torch_dtype == torch.bool:
            out[spec.name] = torch.ones(shape, dtype=torch.bool)
        else:
            low = int(spec.low) if spec.low is not None else 0
            high = int(spec.high) if spec.high is not None else 2
            out[spec.name] = torch.randint(low, high, shape, generator=generator).to(
                spec.torch_dtype
            )
    return out
