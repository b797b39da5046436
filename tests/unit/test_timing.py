"""The interleaved latency comparison the report, ``optimize bench`` and the benchmarks share."""

from __future__ import annotations

import time

from fxopt.run.timing import reference_vs_optimized, time_interleaved


def test_rounds_visit_each_call_in_turn_with_a_warm_up_each_visit():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b")}
    timing = time_interleaved(calls, rounds=3, iters=2, warm=1, warm_s=0.0)
    # one first call each, then per round: a (1 warm + 2 timed), b (1 warm + 2 timed)
    assert order == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 3
    for stats in timing.values():
        assert stats["iters"] == 6
        assert set(stats) == {"p50", "p95", "mean", "iters", "first_s"}
        assert 0 <= stats["p50"] <= stats["p95"]


def test_warm_up_lasts_at_least_warm_s_on_every_visit():
    visits = {"a": 0}

    def call():
        visits["a"] += 1

    start = time.perf_counter()
    time_interleaved({"a": call}, rounds=2, iters=1, warm=1, warm_s=0.05)
    assert time.perf_counter() - start >= 0.1
    assert visits["a"] > 2 + 2  # the warm-ups ran many untimed calls, not one


def test_a_slow_first_call_is_reported_apart_and_not_in_the_median():
    calls = {"n": 0}

    def compiles_once():
        calls["n"] += 1
        time.sleep(0.05 if calls["n"] == 1 else 0.0)

    timing = time_interleaved({"x": compiles_once}, rounds=2, iters=2, warm=1, warm_s=0.0)
    assert timing["x"]["first_s"] >= 0.05 and timing["x"]["p95"] < 50


def test_reference_vs_optimized_times_the_asked_number_of_calls():
    for iters in (1, 2, 3, 10):
        result = reference_vs_optimized(lambda: None, lambda: None, iters, warm=1)
        assert result["reference"]["iters"] == result["optimized"]["iters"] == iters
        assert set(result) == {"reference", "optimized", "speedup_p50"}
