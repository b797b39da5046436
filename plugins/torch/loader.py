"""The ``torch.export`` archive loader: any model saved with ``torch.export.save``.

Inputs, dtypes and dynamic axes are read from the program itself; a dynamic axis keeps the
exporter's symbol name (``s0``) unless the recipe's ``[model.inputs]`` names it. Weights that
hold NaN or inf are refused right after loading, naming the parameter.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fxopt.engine import hookimpl
from fxopt.engine.config import MAX_AXIS, DimRange
from fxopt.engine.errors import ModelError
from fxopt.engine.loading import LoadedModel, Loader, LoadOptions
from fxopt.engine.specs import TORCH_DTYPES, InputSpec
from fxopt.plugins.model_checks import check_finite_weights

DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
UNBOUNDED = 4096


class Pt2Loader(Loader):
    name = "pt2"

    def can_load(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".pt2"

    def load(self, path: Path, options: LoadOptions) -> LoadedModel:
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelError(
                f"not a readable torch.export archive: {type(exc).__name__}: {exc}",
                file=path,
                fix="save the model with torch.export.save(torch.export.export(model, args), "
                "'model.pt2')",
            ) from None
        # parameters and persistent buffers; lifted constants (masks filled with -inf on
        # purpose, say) are the program's own, not weights
        check_finite_weights(program.state_dict.items(), file=path)
        inputs, dims = _inputs_of(program)
        outputs = [
            s.arg.name for s in program.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"
        ]
        return LoadedModel(
            module=_Flat(program.module()),
            task=options.task or "generic",
            inputs=inputs,
            dims=dims,
            output_names=[f"output_{i}" for i in range(len(outputs))],
            files=[path],
        )


class _Flat(torch.nn.Module):
    """Always return a tuple, whatever the exported program returned."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _inputs_of(program: torch.export.ExportedProgram) -> tuple[list[InputSpec], dict]:
    user_inputs = [
        s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"
    ]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs, dims = [], {}
    for name in user_inputs:
        val = nodes[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ModelError(f"input {name!r} is not a tensor; only tensor inputs are supported")
        shape: list[str | int] = []
        for size in val.shape:
            if isinstance(size, torch.SymInt):
                symbol = size.node.expr
                dim = str(symbol)
                bounds = program.range_constraints.get(symbol)
                low = int(bounds.lower) if bounds is not None else 1
                high = bounds.upper if bounds is not None else UNBOUNDED
                high = UNBOUNDED if not math.isfinite(float(high)) else int(high)
                # a range wider than a recipe may declare is narrowed to what it may
                high = min(max(high, 1), MAX_AXIS)
                dims[dim] = DimRange(min=min(max(low, 1), high), max=high)
                shape.append(dim)
            else:
                shape.append(int(size))
        dtype = DTYPE_NAMES.get(val.dtype)
        if dtype is None:
            raise ModelError(f"input {name!r} has unsupported dtype {val.dtype}")
        floating = val.dtype.is_floating_point
        specs.append(
            InputSpec(name, dtype, tuple(shape), -1.0 if floating else 0, 1.0 if floating else 2)
        )
    return specs, dims


@hookimpl
def fxopt_register_loaders(registry) -> None:
    registry.register(Pt2Loader.name, Pt2Loader)
