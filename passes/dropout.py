"""``cleanup.dropout``: drop dropout nodes, which are identities at inference.

``torch.export`` keeps ``aten.dropout`` nodes even in eval mode (13 in a 6-layer BERT); they
are no-ops at inference but block pattern matching (fusions, quantization annotations) in
later passes and in ONNX Runtime.
"""

from __future__ import annotations

import torch

from fxopt.engine.analysis import ALL
from fxopt.engine.pass_base import Pass, PassResult

DROPOUT_OPS = {
    torch.ops.aten.dropout.default,
    torch.ops.aten.feature_dropout.default,
    torch.ops.aten.alpha_dropout.default,
}


class RemoveDropout(Pass):
    name = "cleanup.dropout"
    reads_target = False
    may_change_nothing = True
    edits_weights_in_place = False  # graph edits only

    def run(self, ir, ctx) -> PassResult:
        removed = 0
        for node in list(ir.graph.nodes):
            if node.op == "call_function" and node.target in DROPOUT_OPS:
                node.replace_all_uses_with(node.args[0])
                ir.graph.erase_node(node)
                removed += 1
        ir.module.recompile()
        return PassResult(ir, modified=removed > 0, preserved=ALL, metrics={"removed": removed})
