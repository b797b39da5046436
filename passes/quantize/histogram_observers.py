"""Observers torchao lacks: a running histogram of ``|x|`` and a threshold searched on it.

torchao ships ``MinMaxObserver`` and ``HistogramObserver``; the latter's L2 search moves the
two ends of an *asymmetric* range greedily and stops at the first worse step, so for the
symmetric int8 activations TensorRT wants it does not minimise the error of the range that is
actually used. These observers keep one histogram of ``|x|`` (the range grows as larger
values arrive; old counts are re-binned) and pick ``t`` with a function from
:mod:`.thresholds`; the range is then ``[-t, t]``, clipped to the values seen, which for
uint8 activations keeps the affine ``[min, max]`` where it is narrower.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torchao.quantization.pt2e.observer import UniformQuantizationObserverBase

from .thresholds import entropy_threshold, mse_threshold, percentile_threshold

BINS = 2048


class AbsHistogramObserver(UniformQuantizationObserverBase):
    """Per-tensor observer: histogram of ``|x|`` over ``[0, amax]`` plus signed min/max."""

    kind: ClassVar[str] = ""

    def __init__(self, bins: int = BINS, **kwargs) -> None:
        kwargs.pop("ch_axis", None)
        super().__init__(**kwargs)
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("amax", torch.tensor(0.0))
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float()
        low, high = torch.aminmax(x)
        self.min_val.copy_(torch.minimum(self.min_val, low))
        self.max_val.copy_(torch.maximum(self.max_val, high))
        magnitude = x.abs().flatten()
        peak = magnitude.max()
        if peak > self.amax:
            self._rebin(float(peak))
        if self.amax > 0:
            counts = torch.histc(magnitude, bins=self.bins, min=0.0, max=float(self.amax))
            self.histogram += counts.double()
        return x_orig

    def _rebin(self, new_amax: float) -> None:
        """Stretch the histogram to ``[0, new_amax]``: each old bin moves to the new bin
        that holds its centre."""
        if self.amax > 0 and self.histogram.sum() > 0:
            old_width = float(self.amax) / self.bins
            centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * old_width
            index = (centres / (new_amax / self.bins)).long().clamp(max=self.bins - 1)
            moved = torch.zeros_like(self.histogram).index_add_(0, index, self.histogram)
            self.histogram.copy_(moved)
        self.amax.fill_(new_amax)

    def threshold(self) -> float:
        """The clipping threshold ``t`` on ``|x|``."""
        counts = self.histogram.numpy()
        edges = np.linspace(0.0, float(self.amax), self.bins + 1)
        return self.search(counts, edges)

    def search(self, counts: np.ndarray, edges: np.ndarray) -> float:
        raise NotImplementedError

    @torch.jit.export
    def calculate_qparams(self):
        if not torch.isfinite(self.min_val):
            return self._calculate_qparams(self.min_val, self.max_val)
        t = torch.tensor(self.threshold(), dtype=torch.float32)
        low = torch.maximum(self.min_val, -t)
        high = torch.minimum(self.max_val, t)
        return self._calculate_qparams(low, high)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, amax={float(self.amax):.4g}, bins={self.bins}"


class PercentileObserver(AbsHistogramObserver):
    """``t`` = the ``percentile``-th percentile of ``|x|`` over all calibration data."""

    kind = "percentile"

    def __init__(self, percentile: float = 99.99, **kwargs) -> None:
        super().__init__(**kwargs)
        self.percentile = percentile

    def search(self, counts: np.ndarray, edges: np.ndarray) -> float:
        return percentile_threshold(counts, edges, self.percentile)


class EntropyObserver(AbsHistogramObserver):
    """``t`` minimising the KL divergence of the quantized distribution (TensorRT's entropy
    calibrator)."""

    kind = "entropy"

    def search(self, counts: np.ndarray, edges: np.ndarray) -> float:
        return entropy_threshold(counts, edges, levels=128, start=min(128, self.bins))


class MSEObserver(AbsHistogramObserver):
    """``t`` minimising the mean squared quantization error (rounding plus clipping)."""

    kind = "mse"

    def search(self, counts: np.ndarray, edges: np.ndarray) -> float:
        levels = (self.quant_max - self.quant_min) // 2
        return mse_threshold(counts, edges, levels=levels)
