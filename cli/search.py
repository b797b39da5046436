"""What ``optimize search`` prints when it is done: the table of candidates and the winner."""

from __future__ import annotations

import json

from rich.table import Table

from fxopt.engine.console import Output
from fxopt.search import SearchState
from fxopt.search.results import cache_share, number, values_text


def print_results(state: SearchState, output: Output, *, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(state.to_json(), indent=2))
        return
    table = Table(title=f"search: {len(state.outcomes)} candidates")
    for column in ("", "values", "status", "ms", "vs eager", "cosine", "min", "MB", "s"):
        table.add_column(column, justify="left" if column in ("values", "status") else "right")
    for o in state.outcomes:
        marks = ("★" if o.id == state.winner else "") + ("·" if o.id in state.frontier else "")
        table.add_row(
            f"{o.id}{marks}",
            values_text(o),
            o.status,
            number(o.latency_ms, 2),
            number(o.speedup, 2, "×"),
            number(o.cosine_mean, 4),
            number(o.cosine_min, 4),
            number(o.size_bytes / 1e6 if o.size_bytes is not None else None, 1),
            f"{o.seconds:.0f}",
        )
    output.console.print(table)
    output.step(cache_share(state))
    if state.winner:
        output.step(f"winner {state.winner} (★; · the frontier): winner/ and winner.toml")
