"""``optimize search``: the fastest (or smallest) artifact a recipe's search space holds that
still meets its ``[verify]`` budget.

    from fxopt.search import SearchOptions, search

    state = search("recipes/minilm-compact-int8.toml", options=SearchOptions(out_dir=out))
    print(state.winner, state.frontier)

:mod:`.space` reads the space and makes the candidates, :mod:`.evaluate` runs one,
:mod:`.frontier` picks the frontier and the winner, :mod:`.results` writes what was found and
:mod:`.driver` runs the whole search.
"""

from .driver import SearchOptions, search
from .results import SearchState

__all__ = ["SearchOptions", "SearchState", "search"]
