"""Timing our artifact and its peers fairly in one process.

Every benchmark runs the peer beside ours, in the same process, so that both see the same
machine. The method (rounds that visit the runners in turn, medians, a warm-up by time on
every visit against the previous runner's spinning thread pool) is ``fxopt.run.timing``'s,
the one the report and ``optimize bench`` use; this module adapts it to runners and feeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fxopt.run.timing import time_interleaved


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
    calls = {name: (lambda r=runner: r.run(feeds)) for name, runner in runners.items()}
    timing = time_interleaved(calls, rounds=rounds, iters=iters, warm=warm, warm_s=warm_s)
    return {n: {"ms": t["p50"], "first_s": t["first_s"]} for n, t in timing.items()}
