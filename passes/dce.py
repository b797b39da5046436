"""``cleanup.dce``: remove nodes whose results nothing uses.

Passes that rewrite the graph (pruning, quantization, folding) leave orphans behind; this is
the sweep after them. Impure nodes (in-place ops, asserts, RNG) are kept: fx's
``eliminate_dead_code`` already refuses to drop them.
"""

from __future__ import annotations

from fxopt.engine.analysis import ParameterCount
from fxopt.engine.pass_base import Pass, PassResult


class DeadCodeElimination(Pass):
    name = "cleanup.dce"
    reads_target = False
    may_change_nothing = True
    edits_weights_in_place = False  # graph edits only

    def run(self, ir, ctx) -> PassResult:
        before = len(ir.graph.nodes)
        changed = ir.graph.eliminate_dead_code()
        unused = _drop_unused_attributes(ir.module)
        ir.module.recompile()
        removed = before - len(ir.graph.nodes)
        return PassResult(
            ir,
            modified=bool(changed or unused),
            preserved={ParameterCount.name} if not unused else set(),
            metrics={"nodes_removed": removed, "attributes_removed": unused},
        )


def _drop_unused_attributes(module) -> int:
    """Delete parameters and buffers that no ``get_attr`` node reads any more."""
    used = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    names = [name for name, _ in module.named_parameters()] + [
        name for name, _ in module.named_buffers()
    ]
    removed = 0
    for name in names:
        if name in used or any(u.startswith(name + ".") for u in used):
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        delattr(owner, attr)
        removed += 1
    return removed
