"""Rewrite an exported Q/DQ graph into the layout ONNX Runtime's int8 CPU kernels fuse.

The exporter writes each quantized linear as
``DequantizeLinear(W int8 [out, in], axis=0) -> Transpose(perm=[1, 0]) -> MatMul`` (or, for
2-D inputs, ``Gemm(transB=1)``). ONNX Runtime's QDQ selectors fuse a ``DequantizeLinear``
only when it feeds a MatMul directly (its Gemm selector wanted more than we give it: no fusion
was seen), so the transpose is folded into the initializer (``W^T [in, out]``, ``axis=1``)
and a Gemm becomes MatMul + Add.
Its x86 kernels (``MatMulIntegerToFloat``, ``QLinearMatMul``) take the fast path only for
*uint8* activations; a symmetric int8 activation (zero point 0) is exactly a uint8 one with
zero point 128, so activation Q/DQ pairs with int8 zero points are moved to uint8. On an x86
CPU without VNNI, where ONNX Runtime's uint8 x int8 kernels saturate, the weights of those
integer MatMuls and convolutions move to uint8 too (:func:`_weights_to_uint8`). None of these
steps changes the numbers the graph computes.

After ONNX Runtime has optimized the graph, :func:`fuse_biases` finishes one fusion its QDQ
path leaves undone: each linear's bias ``Add`` becomes the bias input of the fused
``MatMulIntegerToFloat``, which adds it while it scales the int32 result (one pass over the
output fewer per linear).
"""

from __future__ import annotations

import collections
import platform
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fxopt.plugins.onnx.export import save_onnx

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: ONNX Runtime fusions to turn off for Q/DQ graphs: MatMulAddFusion folds a 2-D MatMul + Add
#: back into a Gemm before the QDQ fusions run, and the DQ -> Gemm form stays unfused
DISABLED_OPTIMIZERS = ("MatMulAddFusion",)
#: float ops (ONNX's and ONNX Runtime's fused forms) that quantized linears and convolutions
#: end up as when ONNX Runtime's QDQ fusions do not take them
FLOAT_COMPUTE_OPS = frozenset(
    {"MatMul", "Gemm", "Conv", "ConvTranspose", "FusedConv", "FusedMatMul", "FusedGemm"}
)
#: the fused int8 ops ONNX Runtime's CPU provider turns Q/DQ MatMuls and Gemms into
FUSED_MATMUL_OPS = ("MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul")
#: /proc/cpuinfo flags of the x86 int8 dot products that add u8 x s8 products in int32
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
CPUINFO = Path("/proc/cpuinfo")
#: the ops whose weight :func:`_weights_to_uint8` moves (ONNX Runtime makes MatMulIntegerToFloat
#: / QLinearMatMul and QLinearConv of them, all on the same saturating x86 kernels)
INTEGER_WEIGHT_OPS = frozenset({"MatMul", "Conv"})
#: int8 weights within this magnitude cannot saturate: 2 * 255 * 64 = 32640 fits in int16
SAFE_INT8_WEIGHT = 64


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def u8s8_saturates() -> bool:
    """Whether ONNX Runtime's uint8 x int8 integer kernels saturate on this CPU.

    Its x86 kernels (MLAS, behind MatMulInteger, MatMulIntegerToFloat, QLinearMatMul and
    QLinearConv) multiply uint8 by int8 with ``vpmaddubsw`` where the CPU has no VNNI (AVX2,
    AVX-512 without VNNI): that adds each pair of adjacent products in int16 and saturates, so
    a pair beyond +-32767 (``2 * 255 * 127`` reaches 64770) is clipped and the output silently
    loses accuracy (measured: 0.2-0.6 on outputs of ~1.2 in the int8 tests, an AMD EPYC Zen 1
    with AVX2). VNNI (``vpdpbusd``) and AMX add the products in int32. ARM's kernels widen
    before adding (NEON) or add in int32 (UDOT, I8MM): no saturation, nothing to do.

    True on x86 Linux when ``/proc/cpuinfo`` lists none of :data:`VNNI_FLAGS`; False on other
    architectures and where the flags cannot be read (then nothing changes). Tests monkeypatch
    this function to take either branch on any machine.
    """
    if platform.machine().lower() not in X86_MACHINES:
        return False
    try:
        text = CPUINFO.read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        None,
    )
    return flags is not None and not VNNI_FLAGS.intersection(flags)


def rewrite_file(path: Path) -> dict[str, object] | None:
    """Rewrite the ONNX file at ``path`` (external data kept next to it) when it holds Q/DQ;
    ``None`` (and the file untouched) when it does not."""
    if not has_qdq(onnx.load(str(path), load_external_data=False)):
        return None
    model = onnx.load(str(path))
    stats = rewrite_for_ort(model)
    save_onnx(model, path)
    return stats


def rewrite_for_ort(model: onnx.ModelProto, uint8_weights: bool | None = None) -> dict[str, object]:
    """Rewrite ``model`` in place (see the module docstring); returns what changed.

    ``uint8_weights``: move the int8 weights of uint8-activation MatMuls and convolutions to
    uint8 (:func:`_weights_to_uint8`); ``None`` asks :func:`u8s8_saturates`.
    """
    if uint8_weights is None:
        uint8_weights = u8s8_saturates()
    stats: dict[str, object] = {}
    stats["weight_transposes_folded"] = _fold_weight_transposes(model.graph)
    stats["activations_to_uint8"] = _activations_to_uint8(model.graph)
    moved = _weights_to_uint8(model.graph) if uint8_weights else 0
    stats["weights_to_uint8"] = moved
    if moved:
        stats["weights_to_uint8_why"] = (
            "this x86 CPU has no VNNI: ONNX Runtime's uint8 x int8 kernels add pairs of "
            "products in int16 and saturate, its uint8 x uint8 ones do not (same numbers, "
            "slower kernel)"
        )
    _drop_unused_initializers(model.graph)
    return stats


def float_quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """``{op type: count}`` of the ops in an optimized graph that still read a
    ``DequantizeLinear``: quantized in the graph, but run in float by ONNX Runtime."""
    producers = {out: n for n in model.graph.node for out in n.output}
    left: collections.Counter[str] = collections.Counter()
    for node in model.graph.node:
        if node.op_type not in FLOAT_COMPUTE_OPS:
            continue  # a DequantizeLinear feeding a reshape or a pool is not a lost int8 op
        feeds = [producers.get(name) for name in node.input]
        if any(p is not None and p.op_type == "DequantizeLinear" for p in feeds):
            left[node.op_type] += 1
    return dict(left)


def float_op_warnings(left: dict[str, int], int8_activations: bool = True) -> list[str]:
    """What to tell the user about :func:`float_quantized_ops`' findings.

    ``int8_activations``: the graph quantized activations as int8 (``int8_sym``, moved to
    uint8 by :func:`rewrite_for_ort`). Only then does setting ``activations = "uint8"`` help a
    convolution; with uint8 activations already, one left in float has an output that no
    quantize step reads (a residual add, a pooling), which ONNX Runtime's QLinearConv needs.
    """
    if not left:
        return []
    ops = ", ".join(f"{count} {op}" for op, count in sorted(left.items()))
    hint = ""
    if any("Conv" in op for op in left):
        if int8_activations:
            hint = (
                '; for convolutions set activations = "uint8" in quantize.int8\'s config (a '
                "ReLU output then has zero point 0 and folds into the next quantize step, "
                "which lets ONNX Runtime make a QLinearConv)"
            )
        else:
            hint = (
                "; the activations are uint8 already: these convolutions' outputs go to float "
                "ops (a residual add, a pooling) instead of a quantize step, and ONNX Runtime "
                "makes a QLinearConv only of DequantizeLinear -> Conv -> QuantizeLinear"
            )
    return [f"quantized ops left in float by ONNX Runtime's fusions: {ops}{hint}"]


def finish_optimized(path: Path) -> dict[str, object]:
    """After ONNX Runtime's optimization: :func:`fuse_biases` on the optimized model at
    ``path`` (rewritten in place; its external data, shared with ``model.onnx``, is referenced,
    never rewritten) and :func:`float_quantized_ops` of the result, from one read of the file."""
    model = onnx.load(str(path), load_external_data=False)
    fused = fuse_biases(model.graph)
    if fused:
        onnx.save(model, str(path))
    return {"biases_fused": fused, "float_ops": float_quantized_ops(model)}


def fuse_biases(graph: onnx.GraphProto) -> int:
    """``Add(MatMulIntegerToFloat(...), b)`` with ``b`` a 1-D constant of the output width
    becomes ``MatMulIntegerToFloat(..., bias=b)``; returns how many were fused."""
    inits = {i.name: i for i in graph.initializer}
    consumers = _consumers(graph.node)
    outputs = {o.name for o in graph.output}
    fused = 0
    for node in list(graph.node):
        if node.op_type != "MatMulIntegerToFloat" or (len(node.input) > 6 and node.input[6]):
            continue
        users = consumers[node.output[0]]
        if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in outputs:
            continue
        add = users[0]
        others = [name for name in add.input if name != node.output[0]]
        weight = inits.get(node.input[1])
        bias = inits.get(others[0]) if len(others) == 1 else None
        if bias is None or weight is None or list(bias.dims) != list(weight.dims[-1:]):
            continue
        if bias.data_type != onnx.TensorProto.FLOAT:
            continue
        while len(node.input) < 6:
            node.input.append("")
        node.input.append(bias.name)
        node.output[0] = add.output[0]
        graph.node.remove(add)
        fused += 1
    return fused


def _fold_weight_transposes(graph: onnx.GraphProto) -> int:
    """``DQ(W) -> Transpose -> MatMul`` and ``Gemm(x, DQ(W), b, transB=1)`` (the exporter's
    form for 2-D inputs) both become ``MatMul(x, DQ(W^T, axis 1))`` (+ ``Add(b)``)."""
    inits = {i.name: i for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    consumers = _consumers(graph.node)

    def weight_dq(name: str) -> onnx.NodeProto | None:
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            return None
        if len(consumers[dq.output[0]]) != 1 or len(inits[dq.input[0]].dims) != 2:
            return None
        return dq

    folded = 0
    for node in list(graph.node):
        if node.op_type == "Transpose" and _ints(node, "perm") == [1, 0]:
            dq = weight_dq(node.input[0])
            if dq is None:
                continue
            replacement = [_transposed_dq(graph, inits, dq, node.output[0])]
        elif node.op_type == "Gemm" and _is_plain_linear(node):
            dq = weight_dq(node.input[1])
            if dq is None:
                continue
            replacement = _gemm_as_matmul(graph, inits, dq, node)
        else:
            continue
        at = list(graph.node).index(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(at + offset, new)
        graph.node.remove(node)
        graph.node.remove(dq)
        folded += 1
    return folded


def _transposed_dq(
    graph: onnx.GraphProto, inits: dict, dq: onnx.NodeProto, output: str
) -> onnx.NodeProto:
    """A DequantizeLinear of a new ``W^T`` initializer, its channel axis flipped."""
    weight = numpy_helper.to_array(inits[dq.input[0]])
    name = _free_name(inits, dq.input[0] + "_transposed")
    new_weight = numpy_helper.from_array(np.ascontiguousarray(weight.T), name)
    graph.initializer.append(new_weight)
    inits[name] = new_weight
    return helper.make_node(
        "DequantizeLinear",
        [name, *dq.input[1:]],
        [output],
        name=(dq.name or dq.output[0]) + "_transposed",
        axis=1 - _int(dq, "axis", 1),
    )


def _is_plain_linear(gemm: onnx.NodeProto) -> bool:
    """``y = x W^T + b``: transB=1, no transA, alpha = beta = 1."""
    floats = {a.name: a.f for a in gemm.attribute if a.name in ("alpha", "beta")}
    return (
        _int(gemm, "transB", 0) == 1
        and _int(gemm, "transA", 0) == 0
        and floats.get("alpha", 1.0) == 1.0
        and floats.get("beta", 1.0) == 1.0
    )


def _gemm_as_matmul(
    graph: onnx.GraphProto, inits: dict, dq: onnx.NodeProto, gemm: onnx.NodeProto
) -> list[onnx.NodeProto]:
    has_bias = len(gemm.input) > 2 and gemm.input[2] != ""
    product = gemm.output[0] + "_matmul" if has_bias else gemm.output[0]
    weight = _transposed_dq(graph, inits, dq, dq.output[0] + "_transposed")
    nodes = [weight, helper.make_node("MatMul", [gemm.input[0], weight.output[0]], [product])]
    if has_bias:
        nodes.append(helper.make_node("Add", [product, gemm.input[2]], [gemm.output[0]]))
    return nodes


def _activations_to_uint8(graph: onnx.GraphProto) -> int:
    """Q/DQ of activations with an int8 zero-point initializer -> uint8, zero point + 128.

    Weight DequantizeLinears (data input is an initializer) keep int8; a zero-point
    initializer they share with activations is never edited in place, a uint8 twin is added;
    the declared type of each rewritten QuantizeLinear's output follows.
    """
    inits = {i.name: i for i in graph.initializer}
    twins: dict[str, str] = {}
    retyped: set[str] = set()
    moved = 0
    for node in graph.node:
        if node.op_type not in QDQ_OPS or len(node.input) < 3 or node.input[2] not in inits:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue
        zero_point = numpy_helper.to_array(inits[node.input[2]])
        if zero_point.dtype != np.int8:
            continue
        if node.input[2] not in twins:
            name = _free_name(inits, node.input[2] + "_uint8")
            twin = numpy_helper.from_array(
                (zero_point.astype(np.int16) + 128).astype(np.uint8), name
            )
            graph.initializer.append(twin)
            inits[name] = twin
            twins[node.input[2]] = name
        node.input[2] = twins[node.input[2]]
        if node.op_type == "QuantizeLinear":
            retyped.add(node.output[0])
        moved += 1
    for value in [*graph.value_info, *graph.output]:
        if value.name in retyped:
            value.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    return moved


def _weights_to_uint8(graph: onnx.GraphProto) -> int:
    """The int8 weight of each MatMul / Conv whose other input is a uint8 activation Q/DQ ->
    uint8, ``w + 128`` with zero point ``zp + 128``: the same dequantized values, so the graph
    computes the same numbers, but ONNX Runtime then runs its uint8 x uint8 kernel.

    Why: without VNNI, ONNX Runtime's x86 uint8 x int8 kernels saturate (see
    :func:`u8s8_saturates`); the uint8 x uint8 ones widen to int16 before the multiply-add and
    are exact. Weights within +-64 cannot saturate and stay int8 (ONNX Runtime's own
    ``session.x64quantprecision`` rewrite draws the same line, but turns on wherever U8U8 and
    U8S8 dispatch differ, VNNI CPUs included). Returns how many weight DequantizeLinears moved.
    """
    inits = {i.name: i for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}

    def dequantize(name: str) -> onnx.NodeProto | None:
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def uint8_activation(name: str) -> bool:
        dq = dequantize(name)
        if dq is None or dq.input[0] in inits or len(dq.input) < 3 or dq.input[2] not in inits:
            return False
        return inits[dq.input[2]].data_type == onnx.TensorProto.UINT8

    twins: dict[str, str] = {}

    def twin(name: str, values: np.ndarray) -> str:
        """A uint8 initializer of ``values + 128`` for the int8 one ``name`` (added beside it,
        never edited in place: another DequantizeLinear may read it)."""
        if name not in twins:
            new = _free_name(inits, name + "_uint8")
            tensor = numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8), new)
            graph.initializer.append(tensor)
            inits[new] = tensor
            twins[name] = new
        return twins[name]

    moved = 0
    for node in graph.node:
        if node.op_type not in INTEGER_WEIGHT_OPS or len(node.input) < 2:
            continue
        dq = dequantize(node.input[1])
        if dq is None or not uint8_activation(node.input[0]):
            continue
        weight, scale = dq.input[0], dq.input[1]
        zero_point = dq.input[2] if len(dq.input) > 2 else ""
        if weight not in inits or inits[weight].data_type != onnx.TensorProto.INT8:
            continue  # not a constant int8 weight, or moved already (a DQ read by two ops)
        if (zero_point or scale) not in inits:  # the scale gives an absent zero point's shape
            continue
        values = numpy_helper.to_array(inits[weight])
        if np.abs(values.astype(np.int16)).max(initial=0) <= SAFE_INT8_WEIGHT:
            continue
        if zero_point:
            zero_point = twin(zero_point, numpy_helper.to_array(inits[zero_point]))
        else:  # absent: int8 zero, of the scale's shape
            shape = numpy_helper.to_array(inits[scale]).shape
            zero_point = twin(f"{scale} (zero point)", np.zeros(shape, np.int8))
        del dq.input[:]
        dq.input.extend([twin(weight, values), scale, zero_point])
        moved += 1
    return moved


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _consumers(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in nodes:
        for name in node.input:
            out[name].append(node)
    return out


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    attr = next((a for a in node.attribute if a.name == name), None)
    return list(attr.ints) if attr is not None else None


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    attr = next((a for a in node.attribute if a.name == name), None)
    return attr.i if attr is not None else default


def _free_name(taken: dict, base: str) -> str:
    name, index = base, 0
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name
