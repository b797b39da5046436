"""Capture failures are the user's to fix: they say what to change, and where."""

from __future__ import annotations

import pytest
import torch

from fxopt.engine.errors import CaptureError
from fxopt.engine.loading import LoadedModel
from fxopt.engine.recipe import DimRange
from fxopt.engine.run.capture import capture
from fxopt.engine.specs import InputSpec


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
