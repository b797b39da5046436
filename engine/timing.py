"""Latency measurement shared by the report and ``optimize bench``: warm-up, then medians."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def measure(fn: Callable[[], object], *, warmup: int = 3, iters: int = 20) -> dict[str, float]:
    """Milliseconds per call of ``fn``: p50, p95 and mean after ``warmup`` discarded calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    samples = np.array(times)
    return {
        "p50": round(float(np.median(samples)), 3),
        "p95": round(float(np.percentile(samples, 95)), 3),
        "mean": round(float(samples.mean()), 3),
        "iters": iters,
    }
