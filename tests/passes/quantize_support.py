"""Small models and a pass context for the quantization tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fxopt.engine.console import Output
from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import PassContext
from fxopt.run.recipe import Recipe, VerifySection
from fxopt.run.verify import compare
from tests.graphs import capture_module


class TwoBranch(nn.Module):
    """``a`` and ``b`` read the same input (one shared activation observer), ``out`` reads
    their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return (self.out(torch.relu(self.a(x)) + self.b(x)),)


class Planted(nn.Module):
    """Four linears; ``fc2``'s input has one channel 500x the others (fc1's row 0 scaled up,
    fc2's column 0 scaled down: the float function is unchanged), so int8 with a per-tensor
    scale wipes out fc2's other input channels. Quantizing fc2 costs the most by far."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 32)
        self.fc4 = nn.Linear(32, 8)
        with torch.no_grad():
            self.fc1.weight[0] *= 500.0
            self.fc1.bias[0] *= 500.0
            self.fc2.weight[:, 0] /= 500.0

    def forward(self, x):
        h = torch.tanh(self.fc2(self.fc1(x)))
        return (self.fc4(torch.relu(self.fc3(h))),)


class Collecting(Output):
    """An Output that keeps warnings for assertions."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def make_ir(module: nn.Module, features: int = 8) -> ModelIR:
    torch.manual_seed(0)
    return capture_module(module.eval(), features)


def batches(
    features: int | tuple[int, ...] = 8, count: int = 4, size: int = 8, seed: int = 0
) -> list[dict]:
    """Random batches of ``x``: ``[size, features]``, or ``[size, *features]`` for a tuple."""
    generator = torch.Generator().manual_seed(seed)
    shape = features if isinstance(features, tuple) else (features,)
    return [{"x": torch.randn(size, *shape, generator=generator)} for _ in range(count)]


def context(
    ir: ModelIR,
    cache_dir: Path,
    *,
    calibration: list[dict] | None = None,
    verify: VerifySection | None = None,
    output: Output | None = None,
) -> PassContext:
    """Calibration from ``calibration`` (default: 4 random batches); ``evaluate`` compares
    against the float graph as captured, on other random batches."""
    reference_module = ir.module
    features = tuple(ir.example_inputs[0].shape[1:])
    check = batches(count=2, seed=7, features=features)
    with torch.no_grad():
        reference = [[t.numpy() for t in reference_module(b["x"])] for b in check]

    def evaluate(candidate: ModelIR) -> dict[str, float]:
        with torch.no_grad():
            got = [[t.float().numpy() for t in candidate.module(b["x"])] for b in check]
        return compare(reference, got, [None] * len(check))

    recipe = Recipe(verify=verify or VerifySection())
    data = calibration if calibration is not None else batches(features)
    return PassContext(
        recipe=recipe,
        batches=lambda split: data,
        reference=lambda feeds: list(reference_module(feeds["x"])),
        evaluate=evaluate,
        cache_dir=cache_dir,
        output=output or Output(quiet=True),
    )


def count_ops(ir: ModelIR, fragment: str) -> int:
    return sum(count for op, count in ir.ops().items() if fragment in op)
