"""Capture failures are the user's to fix: they say what to change, and where."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.errors import CaptureError
from fxopt.engine.loading import LoadedModel
from fxopt.engine.pass_base import Pass
from fxopt.engine.specs import InputSpec
from fxopt.passes import DeadCodeElimination
from fxopt.run import capture as capture_stage
from fxopt.run.capture import capture


class ReadsThirdPosition(torch.nn.Module):
    def forward(self, x):
        return (x[:, 2] * 2,)


def test_an_axis_range_the_code_cannot_take_names_its_field_and_the_range_that_works():
    specs = [InputSpec("x", "float32", ("batch", "sequence"))]
    dims = {"batch": DimRange(min=1, max=4), "sequence": DimRange(min=2, opt=8, max=16)}
    loaded = LoadedModel(ReadsThirdPosition(), "generic", specs, dims, ["y"], [])
    with pytest.raises(CaptureError) as info:
        capture(loaded, specs, dims, source="model.pt2")
    error = info.value
    assert error.field == "model.dims.sequence"
    assert "the model's code works only for sequence with min = 3, max = 16" in error.message
    assert error.fix.startswith("set [model.dims.sequence] min = 3, max = 16 (now min = 2")


class TiedWithBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.register_buffer("offset", torch.ones(4))

    def forward(self, x):
        return (self.b(self.a(x)) + self.offset,)


def tied_model() -> LoadedModel:
    specs = [InputSpec("x", "float32", ("batch", 4))]
    dims = {"batch": DimRange(min=1, opt=2, max=4)}
    return LoadedModel(TiedWithBuffer().eval(), "generic", specs, dims, ["y"], [])


def test_a_shared_capture_holds_the_weights_once_and_rebinding_them_leaves_the_original():
    loaded = tied_model()
    original = loaded.module
    before = original.a.weight.detach().clone()
    ir = capture(loaded, loaded.inputs, loaded.dims, source="m", copy_weights=False).module
    params = dict(ir.named_parameters(remove_duplicate=False))
    assert params["a.weight"] is params["b.weight"]  # still tied
    assert params["a.weight"] is not original.a.weight  # its own Parameter objects...
    assert params["a.weight"].data_ptr() == original.a.weight.data_ptr()  # ...no copy
    assert ir.offset.data_ptr() != original.offset.data_ptr()  # buffers: copied
    params["a.weight"].data = torch.zeros(4, 4)  # what cast.fp16 does to a weight
    assert torch.equal(original.a.weight, before)


def test_a_copied_capture_owns_its_weights():
    loaded = tied_model()
    ir = capture(loaded, loaded.inputs, loaded.dims, source="m").module
    params = dict(ir.named_parameters(remove_duplicate=False))
    assert params["a.weight"] is params["b.weight"]
    assert params["a.weight"].data_ptr() != loaded.module.a.weight.data_ptr()


class EditsInPlace(Pass):
    name = "test.scale"


@pytest.mark.parametrize(
    ("passes", "copied"),
    [
        ([], False),
        ([DeadCodeElimination()], False),
        ([DeadCodeElimination(), EditsInPlace()], True),
    ],
)
def test_the_run_copies_the_weights_only_for_a_pass_that_may_write_into_them(passes, copied):
    """A pass that may write into weights (the default) would write into the reference too;
    the others leave the IR sharing the original's weights: a model held once, not twice."""
    loaded = tied_model()
    run = SimpleNamespace(
        loaded=loaded,
        plan=SimpleNamespace(passes=passes),
        output=Output(quiet=True),
        model_path=Path("m"),
    )
    capture_stage.stage(run)
    shared = run.ir.module.a.weight.data_ptr() == loaded.module.a.weight.data_ptr()
    assert shared is not copied
