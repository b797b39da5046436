"""Timing our artifact and its peers fairly in one process.

Every benchmark runs the peer beside ours, in the same process, so that both see the same
machine. Two things make a naive loop unfair on a small CPU: load spikes from elsewhere (so
rounds visit the runners in turn, and each figure is a median over rounds), and the thread
pool of the runner that ran last (torch's OpenMP, ONNX Runtime's own), which keeps spinning on
the cores for a while after its call returns (so each visit starts with untimed calls, at
least ``warm`` of them and at least ``warm_s`` seconds' worth: a 1 ms call is over long before
another pool stops spinning).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol


class Runs(Protocol):
    def run(self, feeds: Mapping[str, Any]) -> Any: ...


def timed(step: Callable[[], object]) -> tuple[object, float]:
    """``step()``'s result and its wall seconds."""
    start = time.perf_counter()
    result = step()
    return result, time.perf_counter() - start


def interleaved(
    runners: Mapping[str, Runs],
    feeds: Mapping[str, Any],
    rounds: int,
    iters: int,
    warm: int = 2,
    warm_s: float = 0.25,
) -> dict[str, dict[str, float]]:
    """Median milliseconds per call of each runner (``ms``) and its first call's seconds
    (``first_s``: compilation, for runners that compile per shape)."""
    first = {}
    for name, runner in runners.items():
        _, first[name] = timed(lambda r=runner: r.run(feeds))
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            start, calls = time.perf_counter(), 0
            while calls < warm or time.perf_counter() - start < warm_s:
                runner.run(feeds)
                calls += 1
            for _ in range(iters):
                start = time.perf_counter()
                runner.run(feeds)
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {n: {"ms": statistics.median(v), "first_s": first[n]} for n, v in samples.items()}
