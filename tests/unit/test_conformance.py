"""fxopt.testing: the kit finds what it promises to find, and the built-ins pass it."""

from __future__ import annotations

import pytest
import torch
from pydantic import ConfigDict

from fxopt.engine import Pass, PassConfig, PassResult
from fxopt.passes.constant_fold import ConstantFold
from fxopt.passes.dce import DeadCodeElimination
from fxopt.passes.dropout import RemoveDropout
from fxopt.testing import assert_conformant, check_pass
from fxopt.testing.toml_text import to_toml
from tests.fixtures.plugins.good import ScaleOutputs


@pytest.mark.parametrize(
    ("pass_class", "config"),
    [
        (DeadCodeElimination, {}),
        (RemoveDropout, {}),
        (ConstantFold, {"max_bytes": 1024}),
        (ScaleOutputs, {"factor": 0.5}),
    ],
)
def test_builtin_and_plugin_passes_conform(pass_class, config):
    assert_conformant(pass_class, config)


class Unnamed(Pass):
    name = "nonamespace"


class LooseConfig(Pass):
    name = "bad.loose"

    class Config(PassConfig):
        model_config = ConfigDict(extra="allow")
        level: int = 1

    def run(self, ir, ctx):
        return PassResult(ir, modified=False)


class RenamesInput(Pass):
    name = "bad.rename"

    def run(self, ir, ctx):
        next(n for n in ir.graph.nodes if n.op == "placeholder").name = "renamed"
        return PassResult(ir, modified=True, preserved=None)


class BreaksGraph(Pass):
    name = "bad.break"

    def run(self, ir, ctx):
        output = next(n for n in ir.graph.nodes if n.op == "output")
        first = output.args[0][0]
        with ir.graph.inserting_before(output):
            wrong = ir.graph.call_function(torch.ops.aten.view.default, (first, [7, 7, 7]))
        output.args = ((wrong,),)
        return PassResult(ir, modified=True)


def checks(pass_class, config=None) -> set[str]:
    return {p.check for p in check_pass(pass_class, config)}


def test_problems_are_found():
    assert checks(Unnamed) == {"name"}
    assert checks(LooseConfig) == {"config"}
    assert checks(RenamesInput) == {"preserved", "signature"}
    assert checks(BreaksGraph) == {"runs"}
    with pytest.raises(AssertionError, match="bad.break|BreaksGraph is not conformant"):
        assert_conformant(BreaksGraph)


def test_toml_text_round_trips():
    import tomllib

    table = {"a": 1, "b": [0.5, 2.0], "c": "x", "d": True, "e": {"f": [1, 2], "g": "h"}}
    assert tomllib.loads(to_toml(table)) == table
