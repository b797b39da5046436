"""Latency measurement shared by the report, ``optimize bench`` and ``benchmarks/``.

Comparing two runners fairly on a small, shared CPU takes two precautions a plain loop lacks:

- **Interleaving.** Rounds visit the runners in turn and each figure is a median over rounds,
  so a load spike from elsewhere hits every runner alike instead of whichever ran during it.
- **Warm-up by time on every visit.** The runner that ran last leaves its thread pool (torch's
  OpenMP, ONNX Runtime's own) spinning on the cores for a while after its call returns; each
  visit therefore starts with untimed calls, at least ``warm`` of them and at least ``warm_s``
  seconds' worth (a 1 ms call is over long before another pool stops spinning). Without it,
  ONNX Runtime on a small CNN read 2.7 ms instead of 1.4 ms right after torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    iters: int = 1,
    warm: int = 2,
    warm_s: float = 0.25,
) -> dict[str, dict[str, float]]:
    """Interleaved timing of each named call: ``rounds`` visits of ``iters`` timed calls.

    Per name: p50, p95 and mean milliseconds, the number of timed calls and ``first_s``, the
    seconds of the very first call (compilation, for runners that compile per shape)."""
    first = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        first[name] = time.perf_counter() - start
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start, done = time.perf_counter(), 0
            while done < warm or time.perf_counter() - start < warm_s:
                call()
                done += 1
            for _ in range(iters):
                start = time.perf_counter()
                call()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: _stats(times) | {"first_s": round(first[name], 3)} for name, times in samples.items()
    }


def reference_vs_optimized(
    reference: Callable[[], object], optimized: Callable[[], object], iters: int, warm: int = 2
) -> dict[str, object]:
    """The latency comparison of the report and ``optimize bench``: exactly ``iters`` timed
    calls of each side, one per round (as interleaved as it gets), a shorter warm-up than the
    benchmarks' (a check, not the figure to publish), and the median speed-up."""
    timed = time_interleaved(
        {"reference": reference, "optimized": optimized},
        rounds=iters,
        iters=1,
        warm=warm,
        warm_s=0.1,
    )
    ref, opt = timed["reference"], timed["optimized"]
    return {
        "reference": ref,
        "optimized": opt,
        "speedup_p50": round(ref["p50"] / opt["p50"], 3) if opt["p50"] else None,
    }


def measure(fn: Callable[[], object], *, warmup: int = 3, iters: int = 20) -> dict[str, float]:
    """Milliseconds per call of one ``fn``: p50, p95 and mean after ``warmup`` discarded
    calls (nothing to interleave with; for two or more, use :func:`time_interleaved`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return _stats(times)


def _stats(times: list[float]) -> dict[str, float]:
    samples = np.array(times)
    return {
        "p50": round(float(np.median(samples)), 3),
        "p95": round(float(np.percentile(samples, 95)), 3),
        "mean": round(float(samples.mean()), 3),
        "iters": len(times),
    }
