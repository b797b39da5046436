"""Will TensorRT build this ONNX model? A static check that runs on any CPU, before a build.

Three families of rules, each reported as a :class:`Problem` that names the node:

- **ops**: every node's op is one TensorRT's ONNX parser supports, on the tensor type it gets,
  with the inputs its restrictions want constant (``Slice``'s ``axes``...), in an opset the
  parser reads. The table is data: ``onnx_ops.json`` (its ``source`` says which
  onnx-tensorrt release it was taken from). TensorRT has no fallback: one unsupported node
  fails the whole build.
- **Q/DQ** (explicit quantization): zero points are 0 (symmetric), the quantized type is
  int8/fp8/int4 (never uint8), scales are constants, per-channel scales only on weights and
  along the consumer's output channels (Conv: axis 0, ConvTranspose: 1, MatMul: the last).
- **shapes**: each network input has a shape in every optimization profile, fixed ONNX dims
  match the profile, and the inputs we will run (verification data) fall inside a profile.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fxopt.engine.specs import InputSpec

from .profiles import Profile, offending_axis, profiles_to_json, uncovered

TABLE = Path(__file__).with_name("onnx_ops.json")

#: ONNX TensorProto element type -> the names the TensorRT table uses
TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8",
    onnx.TensorProto.INT4: "INT4",
}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: consumer op -> (weight input index, output-channel axis of that weight)
WEIGHT_AXIS = {"Conv": (1, 0), "ConvTranspose": (1, 1), "MatMul": (1, -1)}


@dataclass(frozen=True)
class Problem:
    """One reason TensorRT would refuse the model (or mis-quantize it)."""

    kind: str
    message: str
    node: str | None = None
    op: str | None = None
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __str__(self) -> str:
        where = f"node {self.node!r} ({self.op}): " if self.node else ""
        return where + self.message


@dataclass
class CompatReport:
    table: str
    opset: int
    ops: dict[str, int]
    precisions: dict[str, dict[str, int]]
    casts: dict[str, int]
    inputs: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "compatible": self.compatible,
            "table": self.table,
            "opset": self.opset,
            "ops": self.ops,
            "precisions": self.precisions,
            "casts": self.casts,
            "inputs": self.inputs,
            "profiles": self.profiles,
            "problems": [p.to_json() for p in self.problems],
            "notes": self.notes,
        }


@cache
def load_table(path: Path = TABLE) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def check_model(
    model: onnx.ModelProto,
    profiles: Sequence[Profile],
    *,
    specs: Sequence[InputSpec] = (),
    runs: Sequence[Mapping[str, Sequence[int]]] = (),
    table: Mapping[str, Any] | None = None,
) -> CompatReport:
    """Check ``model`` (with its weights loaded) against TensorRT's parser and ``profiles``.

    ``runs`` are input shapes that must run (those of the verification batches); ``specs``
    name the axes, so a shape problem points at the ``[model.dims]`` entry to change.
    """
    table = table or load_table()
    graph = _Graph(model)
    report = CompatReport(
        table=table["source"],
        opset=graph.opset,
        ops=dict(sorted(Counter(n.op_type for n in graph.nodes).items())),
        precisions=graph.precisions(),
        casts=graph.casts(),
        inputs=graph.describe_inputs(),
        profiles=profiles_to_json(profiles),
    )
    report.problems += _opset_problems(graph, table)
    report.problems += _op_problems(graph, table, report.notes)
    report.problems += _qdq_problems(graph, report.notes)
    report.problems += _shape_problems(graph, profiles, specs, runs)
    return report


class _Graph:
    """The model's nodes with what the rules ask about them: types, constants, consumers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        if model.functions:
            model = onnx.inliner.inline_local_functions(model)
        with contextlib.suppress(Exception):  # else inner types stay unknown: rules skip them
            model = onnx.shape_inference.infer_shapes(model)
        self.graph = model.graph
        self.nodes = list(self.graph.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.types: dict[str, int] = {}
        for value in [*self.graph.input, *self.graph.output, *self.graph.value_info]:
            self.types[value.name] = value.type.tensor_type.elem_type
        self.values: dict[str, onnx.TensorProto] = {}
        for init in self.graph.initializer:
            self.types[init.name] = init.data_type
            self.values[init.name] = init
        self.constant = set(self.values)
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.producers = {name: node for node in self.nodes for name in node.output}
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.values[node.output[0]] = attr.t
                        self.types[node.output[0]] = attr.t.data_type
            if node.op_type == "Constant" or (
                node.input and all(not i or i in self.constant for i in node.input)
            ):
                self.constant.update(node.output)
        initializers = {i.name for i in self.graph.initializer}
        self.inputs = [v for v in self.graph.input if v.name not in initializers]

    def type_name(self, value: str) -> str | None:
        code = self.types.get(value)
        return TYPE_NAMES.get(code, onnx.TensorProto.DataType.Name(code)) if code else None

    def rank(self, value: str) -> int | None:
        """The rank of a constant, or of the constant a QuantizeLinear quantized into it."""
        if value in self.values:
            return len(self.values[value].dims)
        producer = self.producers.get(value)
        if producer is not None and producer.op_type == "QuantizeLinear":
            return self.rank(producer.input[0])
        return None

    def array(self, value: str) -> np.ndarray | None:
        tensor = self.values.get(value)
        if tensor is None:
            return None
        try:
            return numpy_helper.to_array(tensor)
        except Exception:  # external data not loaded: values unknown, rules that need them skip
            return None

    def precisions(self) -> dict[str, dict[str, int]]:
        """Op type -> the type of its first input -> count: which ops run in which precision."""
        out: dict[str, Counter] = defaultdict(Counter)
        for node in self.nodes:
            if node.op_type != "Constant" and node.input:
                out[node.op_type][self.type_name(node.input[0]) or "unknown"] += 1
        return {op: dict(counts) for op, counts in sorted(out.items())}

    def casts(self) -> dict[str, int]:
        counts: Counter = Counter()
        for node in self.nodes:
            if node.op_type == "Cast":
                to = next(a.i for a in node.attribute if a.name == "to")
                source = self.type_name(node.input[0]) or "unknown"
                counts[f"{source}->{TYPE_NAMES.get(to, str(to))}"] += 1
        return dict(sorted(counts.items()))

    def describe_inputs(self) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "dtype": self.type_name(v.name),
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in self.inputs
        ]


def _opset_problems(graph: _Graph, table: Mapping[str, Any]) -> list[Problem]:
    low, high = table["opset_min"], table["opset_max"]
    if low <= graph.opset <= high:
        return []
    return [
        Problem(
            "opset",
            f"the model is ONNX opset {graph.opset}; TensorRT {table['tensorrt']}'s parser "
            f"reads opsets {low} to {high}",
            field="target.options.opset",
        )
    ]


def _op_problems(graph: _Graph, table: Mapping[str, Any], notes: list[str]) -> list[Problem]:
    ops, problems, noted = table["operators"], [], set()
    for node in graph.nodes:
        where = {"node": node.name, "op": node.op_type}
        if node.domain not in ("", "ai.onnx"):
            problems.append(
                Problem(
                    "unsupported-op",
                    f"op from the custom domain {node.domain!r}: TensorRT's parser needs a "
                    "plugin for it",
                    **where,
                )
            )
            continue
        entry = ops.get(node.op_type)
        if entry is None or not entry["supported"]:
            why = "not supported" if entry else "not in the support table"
            problems.append(
                Problem(
                    "unsupported-op",
                    f"{node.op_type} is {why} by TensorRT {table['tensorrt']}'s ONNX parser",
                    **where,
                )
            )
            continue
        if node.op_type in QDQ_OPS:
            continue  # quantized types are the Q/DQ rules' business
        problems += _type_problems(graph, node, entry, notes)
        problems += _constant_input_problems(graph, node, entry)
        if (
            entry.get("restrictions")
            and "constant_inputs" not in entry
            and node.op_type not in noted
        ):
            noted.add(node.op_type)
            notes.append(f"{node.op_type}: {entry['restrictions']}")
    return problems


def _type_problems(graph: _Graph, node, entry, notes: list[str]) -> list[Problem]:
    """The first (data) input's type, and a Cast's target type, must be in the table's list."""
    checked = [("input", graph.type_name(node.input[0]) if node.input else None)]
    if node.op_type == "Cast":
        to = next(a.i for a in node.attribute if a.name == "to")
        checked.append(("target", TYPE_NAMES.get(to, onnx.TensorProto.DataType.Name(to))))
    problems = []
    for role, name in checked:
        if name is None or name in entry["types"]:
            continue
        if name == "DOUBLE":
            notes.append(f"node {node.name!r} ({node.op_type}): DOUBLE is cast down to FP32")
            continue
        problems.append(
            Problem(
                "dtype",
                f"{role} type {name} is not one TensorRT supports for {node.op_type} "
                f"({', '.join(entry['types'])})",
                node=node.name,
                op=node.op_type,
            )
        )
    return problems


def _constant_input_problems(graph: _Graph, node, entry) -> list[Problem]:
    wanted = entry.get("constant_inputs")
    if not wanted:
        return []
    try:
        schema = onnx.defs.get_schema(node.op_type, graph.opset)
    except Exception:
        return []
    names = [i.name for i in schema.inputs]
    problems = []
    for name in wanted:
        if name not in names:
            continue
        index = names.index(name)
        if (
            index < len(node.input)
            and node.input[index]
            and node.input[index] not in graph.constant
        ):
            problems.append(
                Problem(
                    "constant-input",
                    f"input {name!r} must be a constant for TensorRT, here it is computed "
                    f"({node.input[index]})",
                    node=node.name,
                    op=node.op_type,
                )
            )
    return problems


def _qdq_problems(graph: _Graph, notes: list[str]) -> list[Problem]:
    """TensorRT's explicit-quantization rules, node by node."""
    problems = []
    for node in graph.nodes:
        if node.op_type not in QDQ_OPS:
            continue
        where = {"node": node.name, "op": node.op_type}
        scale = node.input[1] if len(node.input) > 1 else ""
        zero = node.input[2] if len(node.input) > 2 else ""
        if scale not in graph.constant:
            problems.append(Problem("qdq", "the scale must be a constant (initializer)", **where))
        if zero:
            values = graph.array(zero)
            if values is not None and np.any(values != 0):
                shown = np.unique(values)[:4].tolist()
                problems.append(
                    Problem(
                        "qdq",
                        f"asymmetric quantization: zero point {shown}; TensorRT supports only "
                        "symmetric quantization (zero point 0)",
                        **where,
                    )
                )
            elif zero not in graph.constant:
                problems.append(Problem("qdq", "the zero point must be a constant", **where))
        quantized = node.input[0] if node.op_type == "DequantizeLinear" else zero
        kind = graph.type_name(quantized) if quantized else None
        if node.op_type == "QuantizeLinear" and not zero:
            notes.append(
                f"node {node.name!r}: QuantizeLinear without a zero point is uint8 in ONNX; "
                "give an int8 zero point of 0 to say int8"
            )
        elif kind is not None and kind not in ("INT8", "FP8", "INT4"):
            problems.append(
                Problem(
                    "qdq",
                    f"quantized type {kind}: TensorRT quantizes to INT8, FP8 or INT4 only "
                    f"({kind} is for network inputs and outputs)",
                    **where,
                )
            )
        problems += _axis_problems(graph, node)
    return problems


def _axis_problems(graph: _Graph, node) -> list[Problem]:
    """Per-channel scales: weights only, along the consumer's output channels."""
    scale = graph.array(node.input[1]) if len(node.input) > 1 else None
    if scale is None or scale.size <= 1:
        return []
    where = {"node": node.name, "op": node.op_type}
    data = node.input[0]
    if data not in graph.constant and not _feeds_from_constant_q(graph, data):
        return [
            Problem(
                "qdq",
                "per-channel scale on an activation; TensorRT quantizes activations per tensor",
                **where,
            )
        ]
    if node.op_type == "QuantizeLinear":
        return []  # the DequantizeLinear that follows is checked against the consumer
    rank = graph.rank(data)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    problems = []
    for consumer, entering, weight_axis in _weight_consumers(graph, node.output[0], axis):
        index, expected = WEIGHT_AXIS.get(consumer.op_type, (None, None))
        if consumer.op_type == "Gemm":
            trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
            index, expected = 1, 0 if trans_b else 1
        if index is None or rank is None or list(consumer.input).index(entering) != index:
            continue  # not a weight input we know the channel axis of
        if expected < 0:
            expected += rank
        if weight_axis % rank != expected:
            problems.append(
                Problem(
                    "qdq",
                    f"per-channel axis {axis} does not follow the output channels of "
                    f"{consumer.op_type} {consumer.name!r} (TensorRT wants axis {expected} "
                    "of this weight)",
                    **where,
                )
            )
    return problems


def _feeds_from_constant_q(graph: _Graph, value: str) -> bool:
    """A DequantizeLinear input produced by a QuantizeLinear of a constant (fake-quant weight)."""
    producer = graph.producers.get(value)
    return (
        producer is not None
        and producer.op_type == "QuantizeLinear"
        and producer.input[0] in graph.constant
    )


def _weight_consumers(graph: _Graph, value: str, axis: int):
    """(consumer, the value entering it, the weight's axis as the consumer sees it), looking
    through Transpose."""
    for consumer in graph.consumers.get(value, []):
        if consumer.op_type == "Transpose":
            perm = next((list(a.ints) for a in consumer.attribute if a.name == "perm"), None)
            moved = perm.index(axis) if perm and axis in perm else axis
            yield from _weight_consumers(graph, consumer.output[0], moved)
        else:
            yield consumer, value, axis


def _shape_problems(
    graph: _Graph,
    profiles: Sequence[Profile],
    specs: Sequence[InputSpec],
    runs: Sequence[Mapping[str, Sequence[int]]],
) -> list[Problem]:
    problems = []
    axis_names = {spec.name: spec.dynamic_axes for spec in specs}
    for value in graph.inputs:
        dims = value.type.tensor_type.shape.dim
        for index, profile in enumerate(profiles):
            shape_range = profile.get(value.name)
            if shape_range is None:
                problems.append(
                    Problem(
                        "profile",
                        f"network input {value.name!r} has no shape in optimization profile "
                        f"{index}",
                        field="model.inputs",
                    )
                )
                continue
            if len(dims) != len(shape_range.min):
                problems.append(
                    Problem(
                        "profile",
                        f"input {value.name!r} has rank {len(dims)} in the ONNX graph, "
                        f"{len(shape_range.min)} in profile {index}",
                        field=f"model.inputs.{value.name}.shape",
                    )
                )
                continue
            for axis, dim in enumerate(dims):
                low, high = shape_range.min[axis], shape_range.max[axis]
                if dim.dim_value and (low != dim.dim_value or high != dim.dim_value):
                    name = axis_names.get(value.name, {}).get(axis)
                    problems.append(
                        Problem(
                            "profile",
                            f"input {value.name!r} axis {axis} is fixed at {dim.dim_value} in "
                            f"the ONNX graph, but profile {index} asks {low}..{high} "
                            "(the export specialized a dynamic dimension)",
                            field=f"model.dims.{name}" if name else "model.dims",
                        )
                    )
    for shapes in runs:
        axis = offending_axis(profiles[0], specs, shapes) if profiles else None
        for reason in uncovered(profiles, shapes):
            problems.append(
                Problem(
                    "profile",
                    f"a verification batch is outside the profiles: {reason}",
                    field=f"model.dims.{axis}" if axis else "model.dims",
                )
            )
    return list(dict.fromkeys(problems))  # batches of one shape report once
