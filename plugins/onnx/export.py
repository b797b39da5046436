"""Lowering to ONNX: re-export the IR with its dynamic axes, then name the axes.

Attention is rewritten for ONNX Runtime first (:mod:`.attention`). The dynamo exporter
names dynamic dimensions after its symbols (``s18``); we rename them to
the recipe's axis names (``batch``, ``sequence``) so the ONNX model, ORT and TensorRT profiles
speak the same language as the recipe. Weights go to external data next to ``model.onnx``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import fx

from fxopt.engine.errors import FxoptError
from fxopt.engine.ir import ModelIR

from .attention import rewrite_attention
from .translations import translation_table


class OnnxExportError(FxoptError):
    """The graph holds something the ONNX exporter cannot translate."""


def export_onnx(ir: ModelIR, path: Path, *, opset: int | None = None) -> list[str]:
    """Write ``path`` (+ ``path.data``) and return the file names written. Attention is
    written as plain math first (:mod:`.attention`), on a copy of the graph."""
    # the rewrite edits a copy of the graph; the copy shares the IR's parameters
    lowered = fx.GraphModule(ir.module, copy.deepcopy(ir.module.graph))
    module = lowered if rewrite_attention(lowered) else ir.module
    program = torch.export.export(
        module, ir.example_inputs, dynamic_shapes=ir.dynamic_shapes, strict=False
    )
    sink = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(
                program,
                input_names=ir.input_names,
                output_names=ir.output_names,
                dynamo=True,
                # custom ops' translations, contributed by their plugins (.translations)
                custom_translation_table=translation_table() or None,
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:
        raise OnnxExportError(
            f"the ONNX exporter failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            file=ir.meta.source,
            fix="run with --dump-ir to see the graph; an op without an ONNX translation "
            "needs a pass that rewrites it",
        ) from None
    return _save_program(onnx_program, ir, path)


def _save_program(onnx_program: torch.onnx.ONNXProgram, ir: ModelIR, path: Path) -> list[str]:
    """Write the exporter's model at ``path``, its weights streamed to ``path.data`` one at a
    time from the tensors it holds (``model_proto`` would first copy every weight into one
    protobuf in memory: as much again as the model), then name its dynamic axes in the
    graph, which is small once the weights are outside it."""
    path = Path(path).resolve()
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx_program.save(path, external_data=True)
    model = onnx.load(str(path), load_external_data=False)
    _drop_stack_traces(model)
    _name_dynamic_axes(model, ir)
    onnx.save_model(model, str(path))
    if data.exists() and not data.stat().st_size:
        data.unlink()  # every tensor small enough to stay in the graph
    return [path.name, data.name] if data.exists() else [path.name]


#: node metadata the exporter fills with the Python stack of each op: absolute paths of the
#: machine that built the model, which would make the same build differ by where fxopt and
#: the model's code are installed (and ship those paths)
STACK_TRACE = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(model: onnx.ModelProto) -> None:
    """Remove :data:`STACK_TRACE` from every node: the graph's, its functions' and those of
    subgraphs (``If`` / ``Loop`` bodies)."""
    owners = [model.graph, *model.functions]  # anything with a ``node`` list
    while owners:
        for node in owners.pop().node:
            kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    owners.append(attribute.g)
                owners.extend(attribute.graphs)


def save_onnx(model: onnx.ModelProto, path: Path) -> list[str]:
    """Save ``model`` at ``path`` with its large tensors in ``path.data`` (replaced if there);
    returns the file names written.

    onnx asks whether the data file already exists relative to the *current* directory, not
    the model's, so a ``model.onnx.data`` wherever the user runs would make the save fail;
    the save runs from inside the model's directory, where the question is the right one."""
    path = Path(path).resolve()
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    with _working_directory(path.parent):
        onnx.save_model(
            model,
            path.name,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    return [path.name, data.name] if data.exists() else [path.name]


@contextlib.contextmanager
def _working_directory(directory: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def _name_dynamic_axes(model: onnx.ModelProto, ir: ModelIR) -> None:
    """Replace exporter symbols with the recipe's axis names, everywhere they appear."""
    rename: dict[str, str] = {}
    by_name = {spec.name: spec for spec in ir.inputs}
    for value in model.graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            wanted = spec.dynamic_axes.get(axis)
            if wanted and dim.dim_param:
                rename.setdefault(dim.dim_param, wanted)

    def renamed(param: str) -> str:
        if param in rename:
            return rename[param]
        # an expression of symbols (a cache grown by the new tokens: "s15 + s70")
        named = re.sub(r"[A-Za-z_]\w*", lambda m: rename.get(m.group(0), m.group(0)), param)
        return named.replace(" ", "")

    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = renamed(dim.dim_param)
