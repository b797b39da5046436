"""Per-pass results cache: the IR after each expensive pass, keyed by everything before it.

The key of pass *i* hashes the model, data, plugin and version fingerprint of the build cache,
the recipe's model/data/target sections, of ``[verify]`` only what a pass record holds (the
per-pass numerics' sample count: the budget's bounds judge records, they do not make them),
and the names and configs of passes 0..i. A rerun that changes only a later pass or the budget
resumes from the deepest cached result instead of recalibrating or retraining. The target
enters the keys from the first pass that reads it (``Pass.reads_target``: the half-precision
casts refuse a dtype the backend cannot run; a plugin's pass reads it unless it says not), so a
change of backend reuses the passes before that one: a search over the lowering distils once.
Only passes that took at least ``MIN_SECONDS`` are stored: re-running a cheap pass is faster
than saving and loading a graph.

The graph is stored as a ``torch.export`` archive. Custom ``node.meta`` entries do not survive
the round trip, so a pass must not rely on another pass's metadata across a cache boundary;
anything that fails to save or load is reported as a warning and recomputed, never fatal.
Entries are sealed (:mod:`fxopt.store.entries`): one whose files no longer match their recorded
sha256 is removed and recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fxopt.engine.console import Output
from fxopt.engine.instruments import Instrument, PassRecord
from fxopt.engine.ir import ModelIR
from fxopt.store.entries import check_seal, discard, mark_used, new_entry
from fxopt.store.root import CacheRoot

MIN_SECONDS = 1.0
#: the ``[verify]`` keys a cached pass record depends on (its numerics are measured on this
#: many verification samples); the rest judge or time the final artifact
RECORD_VERIFY_KEYS = ("pass_samples",)


def prefix_keys(components: dict[str, Any], reads_target: list[bool] | None = None) -> list[str]:
    """One key per pass: the inputs plus the recipe up to and including that pass.

    ``reads_target``: each pass's ``Pass.reads_target``. The ``[target]`` table enters the key
    of the first pass that reads it and of every pass after it; without the list (or with one
    that does not match the passes), it enters every key."""
    recipe = components["recipe"]
    specs = recipe["passes"]
    if reads_target is None or len(reads_target) != len(specs):
        reads_target = [True] * len(specs)
    base = {k: v for k, v in components.items() if k != "recipe"}
    base["recipe"] = {k: v for k, v in recipe.items() if k not in ("passes", "verify", "target")}
    base["recipe"]["verify"] = {k: recipe.get("verify", {}).get(k) for k in RECORD_VERIFY_KEYS}
    keys, passes = [], []
    for spec, reads in zip(specs, reads_target, strict=True):
        passes.append(spec)
        if reads and "target" not in base["recipe"]:
            base["recipe"]["target"] = recipe.get("target")
        text = json.dumps({**base, "passes": passes}, sort_keys=True, separators=(",", ":"))
        keys.append(hashlib.sha256(text.encode("utf-8")).hexdigest())
    return keys


@dataclass
class PassCache:
    """``root``: ``<cache>/passes``; ``None`` when the run has no cache (``--no-cache``)."""

    root: Path | None
    keys: list[str]
    output: Output

    def resume(self, ir: ModelIR) -> list[PassRecord]:
        """Load the deepest intact cached result into ``ir``; return the records of its passes.

        Each entry is checked against its seal first: a damaged one is removed with a warning
        and the next shallower one tried, so a flipped bit is recomputed, never shipped.
        """
        if self.root is None:
            return []
        for index in reversed(range(len(self.keys))):
            entry = self.root / self.keys[index]
            if not entry.is_dir():
                continue
            if (problem := check_seal(entry)) is not None:
                self.output.warn(f"pass cache entry {entry} is damaged ({problem}); recomputing")
                discard(entry)
                continue
            try:
                state = json.loads((entry / "state.json").read_text(encoding="utf-8"))
                module = torch.export.load(str(entry / "ir.pt2")).module()
            except Exception as exc:  # a damaged entry costs a recompute, nothing more
                self.output.warn(f"pass cache entry {entry} unreadable ({exc}); recomputing")
                discard(entry)
                continue
            mark_used(entry)
            _adopt(ir, module)
            if "config" in state:  # sizes a pass recorded (prune.structured) for config.json
                ir.meta.config = state["config"]
            records = [PassRecord(**r) for r in state["records"]]
            for record in records:
                record.metrics = {**record.metrics, "cached": True}
            self.output.step(f"reusing cached result of {index + 1} pass(es) ({records[-1].name})")
            return records
        return []

    def instrument(self, done: list[PassRecord]) -> Instrument:
        """Stores each expensive pass's result; ``done`` are the records resumed from cache."""
        return _Store(self, done)

    def store(self, index: int, ir: ModelIR, records: list[PassRecord]) -> None:
        if self.root is None:
            return
        entry = self.root / self.keys[index]
        if entry.exists():
            return
        try:
            spinner = self.output.spinner(f"caching the result of {records[-1].name}")
            with spinner, new_entry(entry) as tmp:
                program = torch.export.export(
                    ir.module, ir.example_inputs, dynamic_shapes=ir.dynamic_shapes, strict=False
                )
                torch.export.save(program, str(tmp / "ir.pt2"))
                records_json = [dataclasses.asdict(r) for r in records]
                state = {"records": records_json, "config": ir.meta.config}
                (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
            CacheRoot(self.root.parent).evict(keep=entry, output=self.output)
        except Exception as exc:
            self.output.warn(f"could not cache the result of {records[-1].name}: {exc}")


class _Store(Instrument):
    def __init__(self, cache: PassCache, done: list[PassRecord]) -> None:
        self.cache = cache
        self.records = list(done)

    def after_pass(self, index, pass_, result, record) -> None:
        self.records.append(record)
        if record.seconds >= MIN_SECONDS:
            self.cache.store(index, result.ir, self.records)


def _adopt(ir: ModelIR, module: torch.fx.GraphModule) -> None:
    """Swap the cached graph into ``ir``, under the model's own input names."""
    nodes = [n for n in module.graph.nodes if n.op == "placeholder"]
    for node, name in zip(nodes, ir.placeholder_names, strict=True):
        node.name = node.target = name
    module.recompile()
    ir.module = module
    ir.resize_inputs(ir.graph_input_sizes())  # a KV cache's heads, as a pass left them
    ir.invalidate()
