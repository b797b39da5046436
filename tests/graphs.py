"""Small modules captured into ModelIRs, for pass and backend tests."""

from __future__ import annotations

import torch

from fxopt.engine.config import DimRange
from fxopt.engine.ir import ModelIR
from fxopt.engine.loading import LoadedModel
from fxopt.engine.specs import InputSpec
from fxopt.run.capture import capture


def capture_module(module: torch.nn.Module, features: int = 8) -> ModelIR:
    """Capture ``module(x)`` with x of shape (batch, features), batch dynamic in 1..32."""
    spec = InputSpec("x", "float32", ("batch", features), -1.0, 1.0)
    return capture_model(module, spec, {"batch": DimRange(min=1, opt=4, max=32)})


def capture_model(
    module: torch.nn.Module,
    spec: InputSpec,
    dims: dict[str, DimRange],
    config: dict | None = None,
) -> ModelIR:
    """Capture ``module`` (a generic task with one input, ``spec``, and one output, ``y``)."""
    loaded = LoadedModel(
        module=module.eval(),
        task="generic",
        inputs=[spec],
        dims=dims,
        output_names=["y"],
        files=[],
        config=config or {},
    )
    return capture(loaded, [spec], dims, source="test")


class WithDeadCode(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Linear(8, 4)
        self.unused = torch.nn.Linear(8, 4)

    def forward(self, x):
        return (self.used(x),)


class WithConstants(torch.nn.Module):
    """``scale`` and the transposed, doubled weight depend on parameters only."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 8))
        self.register_buffer("offset", torch.arange(4, dtype=torch.float32))

    def forward(self, x):
        w = (self.weight * 2.0).t()
        return (x @ w + self.offset.exp(),)


class WithDropout(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x):
        return (self.drop(self.lin(self.drop(x))),)
