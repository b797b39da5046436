"""Capture: ``torch.export`` an eager module into the fx IR, with the recipe's dynamic axes.

Capture failures are the user's to fix (data-dependent control flow, unsupported Python), so
they become a :class:`CaptureError` that names the offending line of model code and points to
``docs/capture.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import traceback
from collections.abc import Callable

import torch

from fxopt.engine.config import DimRange
from fxopt.engine.errors import CaptureError, RecipeError
from fxopt.engine.ir import ModelIR, ModelMeta, placeholder_name
from fxopt.engine.loading import LoadedModel
from fxopt.engine.specs import InputSpec, dim_names, example_sizes, export_dynamic_shapes
from fxopt.engine.synthetic import synthetic_inputs

from .recipe import ModelSection
from .state import RunState

DOCS_HINT = (
    "see docs/capture.md (and https://pytorch.org/docs/stable/export.html) for the usual "
    "rewrites: torch.cond for data-dependent branches, fixed shapes via [model.dims]"
)


def effective_inputs(loaded: LoadedModel, section: ModelSection, label: str) -> list[InputSpec]:
    """The loader's proposed inputs, each overridden by the recipe's ``[model.inputs]``."""
    proposed = {spec.name: spec for spec in loaded.inputs}
    for name in section.inputs:
        if name not in proposed:
            raise RecipeError(
                f"the model has no input {name!r}",
                file=label,
                field=f"model.inputs.{name}",
                fix=f"the model's inputs are: {', '.join(proposed)}",
            )
    # an override keeps what the loader knows and the recipe cannot say (the vocabulary range)
    return [
        dataclasses.replace(spec, dtype=d.dtype, shape=tuple(d.shape), low=d.low, high=d.high)
        if (d := section.inputs.get(name))
        else spec
        for name, spec in proposed.items()
    ]


def effective_dims(
    loaded: LoadedModel, section: ModelSection, specs: list[InputSpec], label: str
) -> dict[str, DimRange]:
    dims = {**loaded.dims, **section.dims}
    for name in dim_names(specs):
        if name not in dims:
            raise RecipeError(
                f"dynamic axis {name!r} has no range",
                file=label,
                field=f"model.dims.{name}",
                fix=f"add [model.dims.{name}] with min and max",
            )
    unused = set(section.dims) - set(dim_names(specs))
    if unused:
        name = sorted(unused)[0]
        raise RecipeError(
            f"no input has an axis named {name!r}",
            file=label,
            field=f"model.dims.{name}",
            fix=f"the inputs' axes are: {', '.join(dim_names(specs)) or 'none (all static)'}",
        )
    return dims


def capture(
    loaded: LoadedModel,
    specs: list[InputSpec],
    dims: dict[str, DimRange],
    *,
    source: str,
    copy_weights: bool = True,
) -> ModelIR:
    """Export ``loaded.module`` with dynamic axes and wrap the result as a :class:`ModelIR`.

    With ``copy_weights`` the IR gets its own copy of the weights (:func:`_own_weights`), so
    that nothing done to it reaches the eager model; without, it shares them
    (:func:`_share_weights`): the run's choice when no pass of the recipe writes into weights
    (see :func:`stage`).
    """
    example = synthetic_inputs(specs, example_sizes(dims), torch.Generator().manual_seed(0))
    args = tuple(example[spec.name] for spec in specs)
    dynamic = export_dynamic_shapes(specs, dims)
    try:
        program = torch.export.export(
            loaded.module, args, dynamic_shapes=_for_signature(loaded.module, dynamic), strict=False
        )
    except Exception as exc:
        raise _capture_error(exc, source, dims) from None
    module = program.module()
    if copy_weights:
        _own_weights(module)
    else:
        _share_weights(module)
    placeholders = [n.name for n in module.graph.nodes if n.op == "placeholder"]
    if placeholders != [placeholder_name(s.name) for s in specs]:
        _rename_placeholders(module, specs)
    return ModelIR(
        module=module,
        inputs=specs,
        example_inputs=args,
        dynamic_shapes=dynamic,
        output_names=list(loaded.output_names),
        meta=ModelMeta(
            task=loaded.task,
            source=source,
            config=dict(loaded.config),
            model_axes=dict(loaded.model_axes),
        ),
    )


def _own_weights(module: torch.nn.Module) -> None:
    """Give the IR its own copy of every parameter and buffer (ties kept).

    ``ep.module()`` shares the very ``Parameter`` objects of the eager model, which is also the
    reference that distillation and verification compare against: a pass editing weights in
    place (pruning, fine-tuning) would otherwise edit the reference too.
    """
    _rebind(module, lambda tensor: tensor.detach().clone())


def _share_weights(module: torch.nn.Module) -> None:
    """Give the IR ``Parameter`` objects of its own over the eager model's parameter storage
    (no copy; ties kept), and its own copy of every buffer.

    A pass may then rebind a weight (``param.data = ...``, a new tensor in its place) without
    touching the eager model; only a write *into* a weight's storage would reach it, which is
    why the run copies instead when a pass may do that (``Pass.edits_weights_in_place``).
    Buffers are copied all the same: they are small, and a graph may write into a buffer when
    it runs.
    """
    _rebind(module, lambda tensor: tensor.detach())


def _rebind(module: torch.nn.Module, weight: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace each parameter of ``module`` by a new ``Parameter`` over ``weight(tensor)`` and
    each buffer by its copy, once per tensor, so that tied weights stay tied."""
    done: dict[int, torch.Tensor] = {}
    for kind, named in (("param", module.named_parameters), ("buffer", module.named_buffers)):
        for name, tensor in list(named(remove_duplicate=False)):
            if id(tensor) not in done:
                if kind == "param":
                    done[id(tensor)] = torch.nn.Parameter(
                        weight(tensor), requires_grad=tensor.requires_grad
                    )
                else:
                    done[id(tensor)] = tensor.detach().clone()
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner), attr, done[id(tensor)])


def _for_signature(module: torch.nn.Module, dynamic: tuple | None) -> tuple | None:
    """Dynamic shapes shaped like ``forward``'s parameters: the inputs a ``*args`` takes
    (``forward(*inputs)``, or a language model's ``forward(ids, mask, positions, *cache)``)
    go as one tuple in its place."""
    if dynamic is None:
        return None
    params = list(inspect.signature(module.forward).parameters.values())
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL not in kinds:
        return dynamic
    fixed = kinds.index(inspect.Parameter.VAR_POSITIONAL)
    return (*dynamic[:fixed], tuple(dynamic[fixed:]))


def _rename_placeholders(module: torch.fx.GraphModule, specs: list[InputSpec]) -> None:
    nodes = [n for n in module.graph.nodes if n.op == "placeholder"]
    for node, spec in zip(nodes, specs, strict=True):
        node.name = node.target = placeholder_name(spec.name)
    module.recompile()


def _capture_error(exc: Exception, source: str, dims: dict[str, DimRange]) -> CaptureError:
    """The exporter's failure as the user's to fix; when the model's code only works for part
    of an axis's range, the error names that axis's recipe field and the range that works."""
    text = str(exc)
    violated = re.search(r"Constraints violated \((\w+)\)", text)
    if violated and violated.group(1) in dims:
        name = violated.group(1)
        wanted = re.search(rf"{name} = Dim\('{name}'((?:, (?:min|max)=\d+)*)\)", text)
        bounds = wanted.group(1).lstrip(", ").replace("=", " = ") if wanted else ""
        now = f"now min = {dims[name].min}, max = {dims[name].max}"
        if bounds:
            return CaptureError(
                f"{_describe(exc)}; the model's code works only for {name} with {bounds}",
                file=source,
                field=f"model.dims.{name}",
                fix=f"set [model.dims.{name}] {bounds} ({now}); see docs/capture.md",
            )
        return CaptureError(
            _describe(exc),
            file=source,
            field=f"model.dims.{name}",
            fix=f"narrow [model.dims.{name}] ({now}) to the sizes the model's code takes "
            "(the guard above); see docs/capture.md",
        )
    return CaptureError(_describe(exc), file=source, fix=DOCS_HINT)


def _describe(exc: Exception) -> str:
    """First lines of the exporter's message plus the model-code line it failed on."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    head = " ".join(lines[:2])[:400] if lines else type(exc).__name__
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if "/torch/" not in frame.filename and "/site-packages/" not in frame.filename:
            where = f" (at {frame.filename}:{frame.lineno}: {frame.line})"
            break
    else:
        for line in lines:
            if 'File "' in line or ".py:" in line:
                where = f" ({line.strip()})"
                break
    return f"torch.export could not capture the model: {type(exc).__name__}: {head}{where}"


def stage(run: RunState) -> None:
    """Stage ``capture``: the loaded model as the IR the passes rewrite.

    The IR shares the eager model's weights unless a pass of the recipe may write into them:
    the eager model stays alive as the reference until verification, and a second copy of a
    1B model's weights is 4.6 GiB more at the run's peak (benchmarks/llm_memory.py).
    """
    loaded = run.loaded
    copy = any(p.edits_weights_in_place for p in run.plan.passes)
    with run.output.stage("capturing with torch.export"):
        run.ir = capture(
            loaded, loaded.inputs, loaded.dims, source=str(run.model_path), copy_weights=copy
        )
