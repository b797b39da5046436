"""A small captured model and a pass context that needs no files, for conformance checks."""

from __future__ import annotations

import torch

from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.ir import ModelIR
from fxopt.engine.loading import LoadedModel
from fxopt.engine.pass_base import PassContext
from fxopt.engine.specs import InputSpec
from fxopt.engine.synthetic import synthetic_inputs
from fxopt.run.capture import capture
from fxopt.run.recipe import Recipe


class _SampleNet(torch.nn.Module):
    """Linear → GELU → LayerNorm → Linear: the shapes most passes have an opinion about."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.fc2(self.norm(torch.nn.functional.gelu(self.fc1(x)))),)


def sample_ir(module: torch.nn.Module | None = None, features: int = 16) -> ModelIR:
    """Capture ``module`` (default: a small MLP) with input ``x`` of shape (batch, features)."""
    torch.manual_seed(0)
    module = (module or _SampleNet()).eval()
    spec = InputSpec("x", "float32", ("batch", features), -1.0, 1.0)
    dims = {"batch": DimRange(min=1, opt=4, max=64)}
    loaded = LoadedModel(
        module=module, task="generic", inputs=[spec], dims=dims, output_names=["y"], files=[]
    )
    return capture(loaded, [spec], dims, source="fxopt.testing")


def sample_context(ir: ModelIR, *, batches: int = 4, batch_size: int = 4) -> PassContext:
    """A context whose calibration / fine-tune data are synthetic batches of ``ir``'s inputs."""
    generator = torch.Generator().manual_seed(0)
    sizes = {d: batch_size for spec in ir.inputs for d in spec.dynamic_axes.values()}
    data = [synthetic_inputs(ir.inputs, sizes, generator) for _ in range(batches)]
    reference = ir.module

    def run_reference(feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            out = reference(*(feeds[name] for name in ir.input_names))
        return list(out) if isinstance(out, (tuple, list)) else [out]

    return PassContext(
        recipe=Recipe(),
        batches=lambda split: data,
        reference=run_reference,
        evaluate=lambda candidate: {},
        cache_dir=None,
        output=Output(quiet=True),
    )
