"""The search's last round: the fastest qualifying candidates timed again, side by side.

Each candidate's latency comes from its own run's ``[verify]`` timing, taken minutes apart
from the others' while the machine did other things: on 2 cores the same artifact read
26.4 ms in one search and 33.3 ms in a benchmark, a swing larger than the differences the
search has to rank. A winner picked on those figures is often the lucky draw. So when every
candidate is done, the qualifying ones whose latency is within ``[search] final_margin`` of
the fastest (at most ``finalists`` of them) are loaded into this one process beside the
original model and timed in rounds that visit each in turn, with a warm-up on every visit
(:func:`fxopt.run.timing.time_interleaved`, the method of ``optimize bench`` and the
benchmarks); the winner is then ranked on those medians.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fxopt.engine.backend import Runner
from fxopt.engine.console import Output
from fxopt.engine.errors import FxoptError
from fxopt.engine.plugin_host import PluginHost
from fxopt.run.output_dir import (
    LoadedOutput,
    load_artifact,
    load_source,
    read_report,
    synthetic_feeds,
    timed_sizes,
)
from fxopt.run.recipe import Recipe
from fxopt.run.timing import time_interleaved

from .evaluate import PASSED, Outcome

#: the original model's name in the final round's timing
ORIGINAL = "original"


def pick(outcomes: list[Outcome], count: int, margin: float) -> list[Outcome]:
    """The qualifying candidates within ``margin`` of the fastest [verify] latency, fastest
    first, at most ``count``."""
    timed = sorted(
        (o for o in outcomes if o.status == PASSED and o.latency_ms is not None),
        key=lambda o: o.latency_ms or 0.0,
    )
    if not timed:
        return []
    bound = (timed[0].latency_ms or 0.0) * (1.0 + margin)
    return [o for o in timed if (o.latency_ms or 0.0) <= bound][:count]


def final_round(
    outcomes: list[Outcome], recipe: Recipe, out: Path, host: PluginHost, output: Output
) -> dict[str, object] | None:
    """Time the finalists and the original model interleaved; sets each finalist's
    ``final_ms`` and ``final_reference_ms`` and returns what the round did (``None`` when it
    had fewer than two candidates to rank, or was turned off)."""
    for o in outcomes:
        o.final_ms = o.final_reference_ms = None
    search = recipe.search
    if search is None or search.objective != "latency" or search.finalists < 2:
        return None
    picks = pick(outcomes, search.finalists, search.final_margin)
    if len(picks) < 2:
        return None
    loaded = _load(picks, out, host, output)
    if len(loaded) < 2:
        return None
    first = next(iter(loaded.values())).report
    source = load_source(first, host, output)
    feeds = synthetic_feeds(source, timed_sizes(first))
    reference = host.tasks.get(source.task)().reference_runner(source)
    calls: dict[str, Callable[[], object]] = {ORIGINAL: _call(reference, feeds)}
    calls.update({cid: _call(item.runner, feeds) for cid, item in loaded.items()})
    rounds = recipe.verify.latency_iters
    shape = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    with output.stage(
        f"final round: timing {', '.join(loaded)} and the original model side by side "
        f"({rounds} interleaved rounds, {shape})"
    ):
        timed = time_interleaved(calls, rounds=rounds, iters=1, warm=2, warm_s=0.25)
    by_id = {o.id: o for o in picks}
    for cid in loaded:
        by_id[cid].final_ms = round(timed[cid]["p50"], 3)
        by_id[cid].final_reference_ms = round(timed[ORIGINAL]["p50"], 3)
    return {"finalists": list(loaded), "rounds": rounds, "shape": shape}


def _call(runner: Runner, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """A call of ``runner`` on the inputs it takes (a lowering may drop an unused one)."""
    taken = {name: feeds[name] for name in runner.input_names}
    return lambda: runner.run(taken)


def _load(
    picks: list[Outcome], out: Path, host: PluginHost, output: Output
) -> dict[str, LoadedOutput]:
    """The finalists' artifacts, as many as half the machine's memory holds beside the
    original model (several copies of a large model at once would end the search in the
    out-of-memory killer); a candidate whose output cannot be read is left out, and said."""
    room = _memory_bytes()
    loaded: dict[str, LoadedOutput] = {}
    used = 0
    for o in picks:
        directory = out / "candidates" / o.id
        try:
            report = read_report(directory)
            model = report.model
            need = model.bytes_after + (model.bytes_before if not loaded else 0)
            if room is not None and used + need > room // 2 and len(loaded) >= 2:
                output.warn(
                    f"final round: {o.id} and any slower left out: their artifacts would not "
                    "fit in half of this machine's memory beside the others"
                )
                break
            loaded[o.id] = load_artifact(directory, report, host, output)
        except FxoptError as exc:
            output.warn(f"final round: {o.id} left out: {exc.render().splitlines()[0]}")
            continue
        used += need
    return loaded


def _memory_bytes() -> int | None:
    """This machine's physical memory, where the OS says (``None`` elsewhere)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
