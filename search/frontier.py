"""Which candidates matter: the Pareto frontier, the winner, and the closest miss.

The frontier is over latency (lower is better), fidelity (the mean cosine against the
original model, higher) and size (lower): a candidate is on it unless another one is at least
as good on all three and better on one. It includes candidates that missed the budget, so the
user sees what a looser budget would buy.
"""

from __future__ import annotations

from .evaluate import DROPPED, OVER_BUDGET, PASSED, TOO_LARGE, Outcome


def _point(o: Outcome) -> tuple[float, float, float] | None:
    if o.latency_ms is None or o.cosine_mean is None or o.size_bytes is None:
        return None
    return (o.latency_ms, -o.cosine_mean, float(o.size_bytes))


def frontier(outcomes: list[Outcome]) -> list[Outcome]:
    """The candidates no other candidate dominates, fastest first."""
    points = [(o, p) for o in outcomes if (p := _point(o)) is not None]
    front = [
        o
        for o, p in points
        if not any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p for _, q in points)
    ]
    return sorted(front, key=lambda o: o.latency_ms or 0.0)


def winner(outcomes: list[Outcome], objective: str, latency_tie: float = 0.0) -> Outcome | None:
    """The fastest (or smallest) candidate that passed, the better cosine breaking ties.

    With ``objective = "latency"``, the latencies ranked are the final round's where it ran
    (the finalists, timed side by side; ``finalists``), else each candidate's own [verify]
    timing. Every passing candidate within ``latency_tie`` (a fraction) of the fastest one is
    a tie, and the best cosine among them wins: medians of a few dozen timed runs differ by a
    few percent between candidates doing the same work, and a search that crowned the lucky
    draw would trade fidelity for noise."""
    passed = [o for o in outcomes if o.status == PASSED]
    if not passed:
        return None
    final = [o for o in passed if o.final_ms is not None]
    if objective == "latency" and final:
        passed = final

    def measure(o: Outcome) -> float:
        if objective == "latency":
            first = o.final_ms if o.final_ms is not None else o.latency_ms
        else:
            first = o.size_bytes
        return float("inf") if first is None else float(first)

    best = min(measure(o) for o in passed)
    bound = best * (1.0 + latency_tie) if objective == "latency" else best
    tied = [o for o in passed if measure(o) <= bound]
    return min(tied, key=lambda o: (-(o.cosine_mean or -1.0), measure(o)))


def closest(outcomes: list[Outcome]) -> Outcome | None:
    """The candidate nearest to qualifying: fewest budget misses, then the best cosine."""
    near = [o for o in outcomes if o.status in (OVER_BUDGET, TOO_LARGE, DROPPED)]
    if not near:
        return None
    return min(near, key=lambda o: (len(o.misses), -(o.cosine_mean or -1.0)))
