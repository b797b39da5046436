"""Clipping thresholds chosen from a histogram of ``|x|``: percentile, entropy (KL), MSE.

These are the searches behind the ``percentile``, ``entropy`` and ``mse`` observers, kept as
pure functions of ``(counts, edges)`` so each can be checked against a value worked out by
hand. ``counts[k]`` is the number of values with ``edges[k] <= |x| < edges[k + 1]``; every
function returns a threshold ``t``: the quantization range becomes ``[-t, t]``.

TensorRT's calibrators work on ``|x|`` the same way (a symmetric int8 range only needs one
bound), which is why the entropy search below follows its published algorithm: 2048 bins,
128 quantization levels, candidates from bin 128 up.
"""

from __future__ import annotations

import numpy as np


def percentile_threshold(counts: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """The upper edge of the bin that holds the ``percentile``-th percentile of ``|x|``."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float(edges[-1])
    cdf = np.cumsum(counts) / total
    index = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
    return float(edges[min(index, len(counts) - 1) + 1])


def mse_threshold(
    counts: np.ndarray, edges: np.ndarray, levels: int = 127, stride: int = 1
) -> float:
    """The threshold ``t`` minimising the squared error of ``|x|`` quantized to ``levels``
    steps of ``t / levels`` (values above ``t`` clip to ``t``), each bin's values taken at the
    bin's centre. Candidates are the bin edges ``edges[k]``, ``k = stride, 2 * stride, ...``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    candidates = edges[stride::stride]
    candidates = candidates[candidates > 0]
    if candidates.size == 0 or counts.sum() <= 0:
        return float(edges[-1])
    errors = np.empty(candidates.size)
    # chunked so a 2048 x 2048 evaluation stays small in memory
    for start in range(0, candidates.size, 256):
        t = candidates[start : start + 256, None]
        step = t / levels
        quantized = np.minimum(np.round(centres[None, :] / step), levels) * step
        errors[start : start + 256] = ((centres[None, :] - quantized) ** 2 * counts).sum(axis=1)
    # the smallest threshold among equal errors: ties keep the finer grid
    return float(candidates[int(np.argmin(errors))])


def entropy_threshold(
    counts: np.ndarray, edges: np.ndarray, levels: int = 128, start: int = 128
) -> float:
    """TensorRT's entropy calibration: the threshold ``edges[i]`` minimising KL(P || Q).

    For each candidate ``i`` (``start <= i <= len(counts)``): P is the histogram cut at bin
    ``i`` with everything above folded into its last bin; Q is P's first ``i`` bins merged
    into ``levels`` groups and spread back evenly over each group's non-empty bins. Bin 0
    (exact zeros, after a ReLU most of the data) is replaced by bin 1's count first, as
    TensorRT does. Among equal divergences the largest threshold wins.
    """
    hist = np.asarray(counts, dtype=np.float64).copy()
    edges = np.asarray(edges, dtype=np.float64)
    n = hist.size
    if n > 1:
        hist[0] = hist[1]
    if hist.sum() <= 0 or n <= start:
        return float(edges[-1])
    best_i, best_kl = n, np.inf
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = hist[i:].sum()
    for i in range(start, n + 1):
        reference = hist[:i].copy()
        reference[-1] += tail[i]
        group = np.minimum((np.arange(i) * levels) // i, levels - 1)
        nonzero = hist[:i] > 0
        sums = np.bincount(group, weights=hist[:i], minlength=levels)
        filled = np.bincount(group, weights=nonzero, minlength=levels)
        spread = np.where(nonzero, sums[group] / np.maximum(filled[group], 1), 0.0)
        kl = _kl(reference, spread)
        if kl <= best_kl:
            best_i, best_kl = i, kl
    return float(edges[best_i])


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two unnormalised histograms (``inf`` where q misses mass p has)."""
    p = p / p.sum()
    qs = q.sum()
    if qs <= 0:
        return np.inf
    q = q / qs
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
