"""One int8 GEMM for quantized linears that read the same activation (attention's Q, K, V).

:func:`merge_parallel_linears` rewrites a Q/DQ graph in the layout
:func:`fxopt.plugins.onnxruntime.qdq.rewrite_for_ort` leaves: the linears' int8 weights (with
their per-channel scales and zero points, their biases and the outlier split's float side
products) are concatenated along the output axis, one ``MatMul`` (one
``MatMulIntegerToFloat`` once ONNX Runtime has fused it) computes them all, and a ``Split``
hands each consumer its columns. Every output column is computed as before: the optimized
graph's outputs equal the unmerged one's.

It is **not** part of the backend's lowering. On all-MiniLM-L6-v2 (``recipes/
minilm-int8-cpu.toml``, 2 shared AVX2 cores without VNNI, ``benchmarks/int8_graph.py``, four
runs) the int8 GEMMs' time fell 2-5% at batch 8, but ONNX Runtime's ``Split`` copies the
merged output (1.3-1.8 ms a layer at batch 8) and the whole model gained only 0.4-1.9% at
batch 8, while at batch 1 it read -9% to +4% in wall time, and the merged
``[128, 384] x [384, 1152]`` GEMMs took longer than the three separate ones in both batch-1
profiles (1-9% more CPU time per call in all four timed repeats that recorded it): short of
the 3% at both batch sizes a lowering change has to win. The benchmark builds its variant
with it, so that the measurement can be repeated on other CPUs and ONNX Runtime versions.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .qdq import _consumers, _drop_unused_initializers, _free_name, _int


def merge_parallel_linears(graph: onnx.GraphProto) -> int:
    """Merge, in place, the quantized linears of ``graph`` that read the same activation.

    A linear here is ``MatMul(x, DequantizeLinear(W [K, N], axis 1))`` followed by a chain of
    ``Add``\\ s, each of a 1-D bias ``[N]`` or of a side product ``MatMul(y, S [k, N])``;
    linears merge when they read the same ``x``, their weights and scales have the same types
    and their chains have the same steps with the same ``y``\\ s. Returns how many linears
    were merged away (two for each Q, K, V triple)."""
    nodes = list(graph.node)  # one wrapper per node, so that ids identify them throughout
    inits = {i.name: i for i in graph.initializer}
    producers = {out: n for n in nodes for out in n.output}
    consumers = _consumers(nodes)
    outputs = {o.name for o in graph.output}
    groups: dict[tuple, list[_Linear]] = collections.defaultdict(list)
    for node in nodes:
        linear = _parallel_linear(node, inits, producers, consumers, outputs)
        if linear is not None:
            groups[linear.key].append(linear)
    groups = {key: members for key, members in groups.items() if len(members) > 1}
    if not groups:
        return 0
    taken = set(inits) | set(producers) | {i.name for i in graph.input}
    position = {id(n): index for index, n in enumerate(nodes)}
    # each merged block goes right after the last producer of x and of the side products'
    # inputs (-1: all graph inputs); every consumer of the members' outputs came after it
    blocks: dict[int, list[onnx.NodeProto]] = collections.defaultdict(list)
    removed: set[int] = set()
    gone: set[str] = set()
    for members in groups.values():
        sides = {step.input[0] for kind, step in members[0].steps if kind == "side"}
        anchor = max(
            (position[id(producers[name])] for name in {members[0].x, *sides} if name in producers),
            default=-1,
        )
        blocks[anchor].extend(_merged_block(graph, inits, taken, members))
        removed |= {id(n) for m in members for n in m.nodes}
        gone |= {o for m in members for n in m.nodes for o in n.output}
        gone -= {m.output for m in members}
    rewritten = list(blocks[-1])
    for index, node in enumerate(nodes):
        if id(node) not in removed:
            rewritten.append(node)
        rewritten.extend(blocks.get(index, []))
    del graph.node[:]
    graph.node.extend(rewritten)
    stale = [v for v in graph.value_info if v.name in gone]
    for value in stale:
        graph.value_info.remove(value)
    _drop_unused_initializers(graph)
    return sum(len(members) - 1 for members in groups.values())


class _Linear:
    """One quantized linear of :func:`merge_parallel_linears`: its weight's DequantizeLinear,
    the MatMul and the chain of bias / side-product Adds after it (``steps``: per Add, the
    bias initializer or the side MatMul)."""

    def __init__(self, dq, matmul, types: tuple[int, int], steps: list, adds: list):
        self.dq, self.matmul, self.steps, self.adds = dq, matmul, steps, adds
        self.x = matmul.input[0]
        self.output = (adds[-1] if adds else matmul).output[0]
        sides = [step for kind, step in steps if kind == "side"]
        self.nodes = [dq, matmul, *sides, *adds]
        signature = tuple((kind, step.input[0] if kind == "side" else "") for kind, step in steps)
        self.key = (self.x, types, *signature)


def _parallel_linear(node, inits, producers, consumers, outputs) -> _Linear | None:
    """``node`` as the MatMul of a linear :func:`merge_parallel_linears` can merge, or None."""
    if node.op_type != "MatMul" or node.input[0] in inits:
        return None
    dq = producers.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return None
    weight = inits[dq.input[0]]
    if len(weight.dims) != 2 or len(consumers[dq.output[0]]) != 1 or dq.output[0] in outputs:
        return None
    width = weight.dims[1]
    scale = inits.get(dq.input[1])
    if scale is None or list(scale.dims) not in ([], [width]):
        return None
    if list(scale.dims) == [width] and _int(dq, "axis", 1) not in (1, -1):
        return None
    if len(dq.input) > 2 and dq.input[2] and dq.input[2] not in inits:
        return None
    steps: list[tuple[str, onnx.NodeProto | str]] = []
    adds = []
    out = node.output[0]
    while out not in outputs and len(consumers[out]) == 1 and consumers[out][0].op_type == "Add":
        add = consumers[out][0]
        others = [name for name in add.input if name != out]
        if len(others) != 1:
            break
        other = others[0]
        if other in inits:
            bias = inits[other]
            if list(bias.dims) != [width] or bias.data_type != onnx.TensorProto.FLOAT:
                break
            steps.append(("bias", other))
        else:
            side = producers.get(other)
            if side is None or side.op_type != "MatMul" or len(consumers[other]) != 1:
                break
            side_weight = inits.get(side.input[1])
            if side_weight is None or len(side_weight.dims) != 2:
                break
            if side_weight.dims[1] != width or side.input[0] in inits:
                break
            steps.append(("side", side))
        adds.append(add)
        out = add.output[0]
    return _Linear(dq, node, (weight.data_type, scale.data_type), steps, adds)


def _merged_block(graph, inits, taken: set[str], members: list[_Linear]) -> list:
    """The nodes (and, added to ``graph``, the initializers) of the merged linear."""
    widths = [inits[m.dq.input[0]].dims[1] for m in members]

    def new_init(base: str, arrays: list[np.ndarray]) -> str:
        name = _free_name(taken, base + "_merged")
        taken.add(name)
        tensor = numpy_helper.from_array(np.concatenate(arrays, axis=-1), name)
        graph.initializer.append(tensor)
        inits[name] = tensor
        return name

    def per_channel(name: str, width: int, dtype) -> np.ndarray:
        if not name:  # DequantizeLinear's default zero point: 0 of the weight's type
            return np.zeros(width, dtype)
        value = numpy_helper.to_array(inits[name])
        return np.broadcast_to(value, (width,))

    def new_name(base: str) -> str:
        name = _free_name(taken, base + "_merged")
        taken.add(name)
        return name

    weights = [numpy_helper.to_array(inits[m.dq.input[0]]) for m in members]
    first = members[0]
    dq_inputs = [
        new_init(first.dq.input[0], weights),
        new_init(
            first.dq.input[1],
            [per_channel(m.dq.input[1], w, None) for m, w in zip(members, widths, strict=True)],
        ),
    ]
    zero_points = [m.dq.input[2] if len(m.dq.input) > 2 else "" for m in members]
    if any(zero_points):
        dq_inputs.append(
            new_init(
                first.dq.input[2] or first.dq.input[0] + "_zero_point",
                [
                    per_channel(z, w, wt.dtype)
                    for z, w, wt in zip(zero_points, widths, weights, strict=True)
                ],
            )
        )
    dq_out = new_name(first.dq.output[0])
    out = new_name(first.matmul.output[0])
    nodes = [
        helper.make_node("DequantizeLinear", dq_inputs, [dq_out], name=dq_out, axis=1),
        helper.make_node("MatMul", [first.x, dq_out], [out], name=out),
    ]
    for index, (kind, step) in enumerate(first.steps):
        if kind == "bias":
            other = new_init(
                step, [numpy_helper.to_array(inits[m.steps[index][1]]) for m in members]
            )
        else:
            side_weights = [
                numpy_helper.to_array(inits[m.steps[index][1].input[1]]) for m in members
            ]
            other = new_name(step.output[0])
            nodes.append(
                helper.make_node(
                    "MatMul",
                    [step.input[0], new_init(step.input[1], side_weights)],
                    [other],
                    name=other,
                )
            )
        total = new_name(first.adds[index].output[0])
        nodes.append(helper.make_node("Add", [out, other], [total], name=total))
        out = total
    sizes = new_init(out + "_split", [np.array(widths, np.int64)])
    nodes.append(
        helper.make_node(
            "Split", [out, sizes], [m.output for m in members], name=out + "_split", axis=-1
        )
    )
    return nodes
