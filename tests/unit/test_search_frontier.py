"""The frontier, the winner and the closest miss of a search, and what it writes."""

from __future__ import annotations

from fxopt.search.evaluate import DROPPED, OVER_BUDGET, PASSED, Outcome
from fxopt.search.finalists import pick
from fxopt.search.frontier import closest, frontier, winner
from fxopt.search.results import SearchState, load_state, markdown, svg


def outcome(id_, status, ms, cosine, size, misses=()):
    return Outcome(
        id_,
        {"passes.prune.structured.ffn": 0.1},
        status,
        latency_ms=ms,
        reference_ms=10.0,
        cosine_mean=cosine,
        cosine_min=cosine,
        size_bytes=size,
        misses=list(misses),
    )


OUTCOMES = [
    outcome("c1", PASSED, 5.0, 0.99, 100),
    outcome("c2", PASSED, 4.0, 0.98, 100),  # faster, less faithful: both on the frontier
    outcome("c3", PASSED, 6.0, 0.98, 100),  # slower and no better than c1: dominated
    outcome("c4", OVER_BUDGET, 3.0, 0.90, 100, ["cosine_mean 0.9 against min_cosine = 0.95"]),
    outcome("c5", DROPPED, None, 0.80, None, ["a", "b"]),  # not timed: not on the frontier
]


def test_frontier_keeps_what_nothing_dominates_fastest_first():
    assert [o.id for o in frontier(OUTCOMES)] == ["c4", "c2", "c1"]


def test_winner_is_the_fastest_that_passed_or_the_smallest():
    assert winner(OUTCOMES, "latency").id == "c2"
    smaller = [*OUTCOMES, outcome("c6", PASSED, 9.0, 0.97, 50)]
    assert winner(smaller, "size").id == "c6"
    # a tie on the objective goes to the better cosine
    tied = [outcome("a", PASSED, 4.0, 0.97, 1), outcome("b", PASSED, 4.0, 0.99, 1)]
    assert winner(tied, "latency").id == "b"
    assert winner([o for o in OUTCOMES if o.status != PASSED], "latency") is None


def test_latencies_within_the_tie_go_to_the_better_cosine():
    """The figures of a real MiniLM search: 34.61 ms at 0.9346 against 35.27 ms at 0.9364 is
    timing noise, not a faster artifact; 38.85 ms is slower."""
    found = [
        outcome("c01", PASSED, 35.27, 0.9364, 1),
        outcome("c02", PASSED, 38.85, 0.9370, 1),
        outcome("c06", PASSED, 34.61, 0.9346, 1),
    ]
    assert winner(found, "latency").id == "c06"  # no tie: the fastest
    assert winner(found, "latency", latency_tie=0.05).id == "c01"
    assert winner(found, "latency", latency_tie=0.15).id == "c02"
    # the tie is for latency only: sizes are exact
    assert (
        winner(
            [outcome("a", PASSED, 1, 0.9, 100), outcome("b", PASSED, 1, 0.99, 101)],
            "size",
            latency_tie=0.05,
        ).id
        == "a"
    )


def test_closest_has_the_fewest_misses():
    assert closest(OUTCOMES).id == "c4"
    assert closest([o for o in OUTCOMES if o.status == PASSED]) is None


def test_the_state_round_trips_and_renders(tmp_path):
    state = SearchState("r.toml", "m", "f", "latency", {"k": [1]}, 5, list(OUTCOMES))
    state.frontier, state.winner, state.seconds = ["c4", "c2", "c1"], "c2", 10.0
    for o in state.outcomes:
        o.alone_seconds = 4.0
    state.save(tmp_path)
    again = load_state(tmp_path)
    assert again.to_json() == state.to_json()
    text = markdown(again)
    assert "winner: **c2** (ffn=0.1)" in text
    assert "search 10 s; the same candidates run one by one: 20 s" in text and "saved 50%" in text
    assert "| c5 |" in text and "dropped: a; b" in text
    state.seconds = 20.4  # nothing shared: not "-2%"
    assert "saved 0%" in markdown(state)
    picture = svg(again, 0.95)
    assert picture.count("<circle") == 5  # four timed candidates and the winner's ring
    assert 'stroke-dasharray="4 3"' in picture  # the budget's cosine


def test_the_final_round_times_rank_the_finalists_only():
    """c06 timed fastest in its own run, but side by side c01 is 10% faster; c03, never a
    finalist, does not enter a ranking its own timing cannot be compared with."""
    found = [
        outcome("c01", PASSED, 35.27, 0.9364, 1),
        outcome("c06", PASSED, 34.61, 0.9346, 1),
        outcome("c03", PASSED, 36.0, 0.9390, 0),
    ]
    found[0].final_ms, found[1].final_ms = 30.0, 33.0
    assert winner(found, "latency").id == "c01"
    # within the tie, the better cosine among the finalists
    found[1].final_ms = 30.5
    assert winner(found, "latency", latency_tie=0.05).id == "c01"
    found[1].cosine_mean = 0.95
    assert winner(found, "latency", latency_tie=0.05).id == "c06"
    # the smallest artifact is the smallest, final round or not
    assert winner(found, "size").id == "c03"


def test_finalists_are_the_qualifying_candidates_near_the_fastest():
    found = [
        outcome("slow", PASSED, 13.0, 0.99, 1),
        outcome("a", PASSED, 10.0, 0.99, 1),
        outcome("b", PASSED, 12.4, 0.99, 1),
        outcome("over", OVER_BUDGET, 5.0, 0.5, 1),
        outcome("c", PASSED, 11.0, 0.99, 1),
        outcome("untimed", PASSED, None, 0.99, 1),
    ]
    assert [o.id for o in pick(found, 4, 0.25)] == ["a", "c", "b"]
    assert [o.id for o in pick(found, 2, 0.25)] == ["a", "c"]
    assert [o.id for o in pick(found, 4, 0.0)] == ["a"]
    assert pick([found[3]], 4, 0.25) == []
