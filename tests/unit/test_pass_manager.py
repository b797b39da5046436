"""The pass manager: history in errors, analysis invalidation, instruments, graph checks."""

from __future__ import annotations

import pytest
import torch

from fxopt.engine import ALL, Analysis, Pass, PassResult
from fxopt.engine.console import Output
from fxopt.engine.errors import DataError
from fxopt.engine.instruments import DumpIR, Numerics
from fxopt.engine.pass_base import PassContext
from fxopt.engine.pass_manager import PassBug, PassManager
from fxopt.passes.dce import DeadCodeElimination
from fxopt.passes.dropout import RemoveDropout
from fxopt.run.recipe import Recipe
from tests.graphs import WithDropout, capture_module


class NodeCount(Analysis):
    name = "node-count"
    computed = 0

    def compute(self, ir):
        NodeCount.computed += 1
        return len(ir.graph.nodes)


class Touch(Pass):
    """Claims a change; preserves what it is told to."""

    name = "test.touch"

    def __init__(self, preserved=frozenset()):
        super().__init__()
        self.preserved = preserved

    def run(self, ir, ctx):
        return PassResult(ir, modified=True, preserved=self.preserved)


class Explode(Pass):
    name = "test.explode"

    def run(self, ir, ctx):
        raise ZeroDivisionError("boom")


class Complain(Pass):
    name = "test.complain"

    def run(self, ir, ctx):
        raise DataError("bad data", field="data.calibration")


class DropInput(Pass):
    name = "test.drop_input"

    def run(self, ir, ctx):
        node = next(n for n in ir.graph.nodes if n.op == "placeholder")
        node.name = "renamed"
        return PassResult(ir, modified=True)


def context() -> PassContext:
    return PassContext(
        recipe=Recipe(),
        batches=lambda split: [],
        reference=lambda feeds: [],
        evaluate=lambda ir: {},
        cache_dir=None,
        output=Output(quiet=True),
    )


def test_analyses_are_cached_and_dropped_unless_preserved():
    ir = capture_module(WithDropout())
    NodeCount.computed = 0
    ir.analysis(NodeCount)
    ir.analysis(NodeCount)
    assert NodeCount.computed == 1

    PassManager([Touch(preserved={"node-count"})]).run(ir, context())
    assert "node-count" in ir.cached_analyses()
    PassManager([Touch(preserved=ALL)]).run(ir, context())
    assert "node-count" in ir.cached_analyses()
    PassManager([Touch()]).run(ir, context())
    assert "node-count" not in ir.cached_analyses()


def test_internal_error_names_the_pass_and_history():
    ir = capture_module(WithDropout())
    with pytest.raises(PassBug) as info:
        PassManager([RemoveDropout(), DeadCodeElimination(), Explode()]).run(ir, context())
    assert str(info.value) == (
        "pass 'test.explode' failed after [cleanup.dropout, cleanup.dce]: ZeroDivisionError: boom"
    )
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_user_error_keeps_its_class_and_gains_history():
    ir = capture_module(WithDropout())
    with pytest.raises(DataError) as info:
        PassManager([RemoveDropout(), Complain()]).run(ir, context())
    assert "pass 'test.complain' failed after [cleanup.dropout]: bad data" in str(info.value)


def test_a_pass_may_not_change_the_inputs():
    ir = capture_module(WithDropout())
    with pytest.raises(PassBug, match=r"changed the model inputs from \['x'\]"):
        PassManager([DropInput()]).run(ir, context())


def test_records_and_instruments(tmp_path):
    ir = capture_module(WithDropout())
    x = torch.randn(3, 8)
    reference = ir.run({"x": x})[0]

    def evaluate(candidate):
        return {"max_abs": float((candidate.run({"x": x})[0] - reference).abs().max())}

    instruments = [Numerics(evaluate), DumpIR(tmp_path / "ir")]
    ir, records = PassManager([RemoveDropout(), DeadCodeElimination()], instruments).run(
        ir, context()
    )
    assert [r.name for r in records] == ["cleanup.dropout", "cleanup.dce"]
    assert records[0].modified and records[0].metrics == {"removed": 2}
    assert records[0].nodes_after == records[0].nodes_before - 2
    assert records[0].numerics == {"max_abs": 0.0}
    dumps = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert dumps == ["00-captured.py", "01-cleanup.dropout.py", "02-cleanup.dce.py"]
    assert "dropout" in (tmp_path / "ir" / "00-captured.py").read_text()
    assert "dropout" not in (tmp_path / "ir" / "01-cleanup.dropout.py").read_text()


class Idle(Pass):
    """Asked to change the model, changes nothing (an int8 pass that found no layer)."""

    name = "test.idle"

    def run(self, ir, ctx):
        return PassResult(ir, modified=False, preserved=ALL)


class Warns(Pass):
    name = "test.warns"

    def run(self, ir, ctx):
        ctx.warn("layer 3 left in fp32")
        return PassResult(ir, modified=True, preserved=ALL)


def test_warnings_are_recorded_per_pass_and_a_pass_that_changed_nothing_is_one():
    ir = capture_module(WithDropout())
    shown = []
    ctx = context()
    ctx.output.warn = shown.append
    _, records = PassManager([Warns(), Idle(), Touch()]).run(ir, ctx)
    assert records[0].warnings == ["layer 3 left in fp32"]
    assert records[1].warnings == ["pass 'test.idle' changed nothing it was asked to change"]
    assert records[2].warnings == []
    assert shown == records[0].warnings + records[1].warnings
    assert records[1].to_json()["warnings"] == records[1].warnings
    assert ctx.warnings == []  # the run's context is not where a pass's warnings land


def test_a_cleanup_that_finds_nothing_is_no_warning():
    ir = capture_module(WithDropout())
    ir, _ = PassManager([RemoveDropout()]).run(ir, context())
    _, records = PassManager([RemoveDropout(), DeadCodeElimination()]).run(ir, context())
    assert [r.modified for r in records] == [False, False]
    assert [r.warnings for r in records] == [[], []]
