"""The cleanup passes, each on a graph where it has something to do."""

from __future__ import annotations

import torch

from fxopt.passes.constant_fold import ConstantFold
from fxopt.passes.dce import DeadCodeElimination
from fxopt.passes.dropout import RemoveDropout
from tests.graphs import WithConstants, WithDeadCode, WithDropout, capture_module

X = torch.randn(5, 8)


def targets(ir) -> list[str]:
    return [str(n.target) for n in ir.graph.nodes if n.op == "call_function"]


def test_dce_removes_dead_nodes_and_their_parameters():
    ir = capture_module(WithDeadCode())
    graph = ir.graph
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):  # a dead branch, as a rewrite pass would leave one
        weight = graph.get_attr("unused.weight")
        graph.call_function(torch.ops.aten.linear.default, (placeholder, weight))
    expected = ir.run({"x": X})[0]
    params_before = ir.parameter_count()

    result = DeadCodeElimination().run(ir, None)

    assert result.modified
    # the dead linear and our get_attr, plus the two get_attr nodes export left for unused.*
    assert result.metrics["nodes_removed"] == 4
    assert result.metrics["attributes_removed"] == 2  # unused.weight and unused.bias
    assert ir.parameter_count() == params_before - (8 * 4 + 4)
    assert targets(ir).count("aten.linear.default") == 1
    torch.testing.assert_close(ir.run({"x": X})[0], expected)


def test_dce_without_dead_code_changes_nothing():
    ir = capture_module(torch.nn.Linear(8, 4))
    result = DeadCodeElimination().run(ir, None)
    assert not result.modified and result.metrics["nodes_removed"] == 0


def test_constant_fold_precomputes_parameter_only_subgraphs():
    ir = capture_module(WithConstants())
    expected = ir.run({"x": X})[0]
    before = targets(ir)
    assert "aten.t.default" in before and "aten.exp.default" in before

    result = ConstantFold().run(ir, None)

    after = targets(ir)
    assert result.metrics["folded"] == 2  # (weight * 2).t() and offset.exp()
    assert "aten.t.default" not in after and "aten.exp.default" not in after
    assert "aten.mul.Tensor" not in after
    torch.testing.assert_close(ir.run({"x": X})[0], expected)
    torch.testing.assert_close(ir.run({"x": X[:2]})[0], expected[:2])  # still dynamic in batch


def test_constant_fold_respects_max_bytes():
    ir = capture_module(WithConstants())
    result = ConstantFold(ConstantFold.Config(max_bytes=8)).run(ir, None)
    assert result.metrics["folded"] == 0
    assert "aten.t.default" in targets(ir)


class WrittenInPlace(torch.nn.Module):
    """A value computed from a buffer, then written in place (as GPT-2 and Llama ``detach_``
    their computed masks)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("base", torch.ones(8))

    def forward(self, x):
        scale = self.base * 2.0
        scale.add_(1.0)
        return (x * scale,)


def test_constant_fold_never_folds_a_value_an_in_place_op_writes():
    ir = capture_module(WrittenInPlace())
    assert "aten.add_.Tensor" in targets(ir)
    expected = ir.run({"x": X})[0]
    result = ConstantFold().run(ir, None)
    assert result.metrics["folded"] == 0
    for _ in range(3):  # a folded buffer would grow by one each call
        torch.testing.assert_close(ir.run({"x": X})[0], expected)
    assert [name for name, _ in ir.module.named_buffers()] == ["base"]


def test_remove_dropout():
    ir = capture_module(WithDropout())
    assert targets(ir).count("aten.dropout.default") == 2
    expected = ir.run({"x": X})[0]
    result = RemoveDropout().run(ir, None)
    assert result.metrics == {"removed": 2}
    assert "aten.dropout.default" not in targets(ir)
    torch.testing.assert_close(ir.run({"x": X})[0], expected)
