"""Rewriting a graph to half precision with an explicit cast at every dtype border.

The walk is in topological order. Each compute node's float inputs are cast (with
``aten._to_copy(x, dtype=...)``) to the dtype its :class:`~.policy.Role` asks for, and its
``meta["val"]`` is recomputed by running the op on the fake tensors of its inputs, so every
node states the dtype it really produces (the exported ONNX, and a strongly typed TensorRT
network, then build exactly this). A cast of one value to one dtype is made once, before its
first consumer, and reused by the others.

Parameters and buffers are stored in the dtype their consumers want: half when any consumer
computes in half, float32 when all of them are float32 islands (LayerNorm's weight and bias).

A constant the half dtype cannot hold keeps its op in float32: a scalar argument beyond the
dtype's range (the ``torch.finfo(float32).min`` DeBERTa fills masked attention scores with,
which ``masked_fill`` on an fp16 tensor refuses to convert) or a parameter or buffer holding
such values. Cast down, either would become ``inf``, and the ``inf - inf`` after it ``NaN``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx
from torch._guards import detect_fake_mode

from fxopt.engine.ir import META_PREFIX

from .policy import CASTABLE, Policy, Role, op_name

CAST = torch.ops.aten._to_copy.default
ASSERT_METADATA = torch.ops.aten._assert_tensor_metadata.default
#: node metadata: the precision a node computes in, and why a cast was inserted
PRECISION_KEY = META_PREFIX + "precision"
CAST_KEY = META_PREFIX + "cast"


@dataclass
class CastStats:
    """What the rewrite did, for the pass's metrics and the tests."""

    half_ops: Counter = field(default_factory=Counter)
    fp32_ops: Counter = field(default_factory=Counter)
    casts: int = 0
    half_tensors: int = 0
    fp32_tensors: int = 0
    #: nodes kept in float32 because a constant they read is beyond the half dtype's range
    out_of_range: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "half_ops": sum(self.half_ops.values()),
            "fp32_ops": dict(sorted(self.fp32_ops.items())),
            "casts": self.casts,
            "params_half": self.half_tensors,
            "params_fp32": self.fp32_tensors,
            **({"fp32_out_of_range": self.out_of_range} if self.out_of_range else {}),
        }


def cast_graph(
    module: fx.GraphModule,
    policy: Policy,
    dtype: torch.dtype,
    *,
    final_op_fp32: bool = True,
    outputs_fp32: bool = True,
    light_ops_follow_inputs: bool = True,
) -> CastStats:
    """Rewrite ``module`` in place to compute in ``dtype`` except where ``policy`` keeps fp32."""
    graph = module.graph
    fake_mode = detect_fake_mode([n.meta.get("val") for n in graph.nodes])
    if fake_mode is None:
        raise ValueError("the graph carries no fake-tensor metadata (is it a torch.export graph?)")
    roles = {n: policy.role(n) for n in graph.nodes if n.op == "call_function"}
    if final_op_fp32:
        for node in _output_producers(graph, roles):
            roles[node] = Role.KEEP
    stats = CastStats()
    for node in _out_of_range(module, roles, dtype):
        roles[node] = Role.KEEP
        stats.out_of_range.append(node.name)
    _cast_parameters(module, roles, dtype, fake_mode, stats)
    casts: dict[tuple[fx.Node, torch.dtype], fx.Node] = {}
    for node in list(graph.nodes):
        if node.op == "call_function":
            role = roles[node]
            want = _compute_dtype(node, role, dtype, light_ops_follow_inputs)
            if want is not None:
                _cast_inputs(graph, node, want, casts, fake_mode, stats)
            elif node.target is ASSERT_METADATA:
                _retarget_assert(node)
            _propagate(node, fake_mode)
            if want is not None:
                _record(node, want, stats)
        elif node.op == "output" and outputs_fp32:
            _cast_outputs(graph, node, casts, fake_mode, stats)
    graph.lint()
    module.recompile()
    return stats


def _output_producers(graph: fx.Graph, roles: dict[fx.Node, Role]) -> list[fx.Node]:
    """The compute node behind each output, looking through data-movement ops."""
    found = []
    output = next(n for n in graph.nodes if n.op == "output")
    stack = list(output.all_input_nodes)
    seen: set[fx.Node] = set()
    while stack:
        node = stack.pop()
        if node in seen or node.op != "call_function":
            continue
        seen.add(node)
        if roles[node] in (Role.FOLLOW, Role.EXPLICIT):
            stack.extend(node.all_input_nodes)
        elif roles[node] in (Role.HALF, Role.LIGHT):
            found.append(node)
    return found


def _out_of_range(
    module: fx.GraphModule, roles: dict[fx.Node, Role], dtype: torch.dtype
) -> list[fx.Node]:
    """Half-precision nodes reading a constant ``dtype`` cannot hold: a finite scalar
    argument beyond its range, or a parameter or buffer (through data movement) with such
    values. They compute in float32, so the constant is never rounded to ``inf``."""
    limit = torch.finfo(dtype).max
    found: dict[fx.Node, None] = {}
    for node in module.graph.nodes:
        if node.op == "call_function" and roles[node] in (Role.HALF, Role.LIGHT):
            scalars: list = []
            fx.node.map_aggregate((node.args, node.kwargs), scalars.append)
            if any(_beyond(value, limit) for value in scalars):
                found[node] = None
        elif node.op == "get_attr" and _is_castable(node):
            value = _attr(module, node.target)
            finite = value.detach()[torch.isfinite(value.detach())]
            if finite.numel() and float(finite.abs().max()) > limit:
                for user in _compute_users(node, roles):
                    found[user] = None
    return list(found)


def _beyond(value, limit: float) -> bool:
    """A finite float scalar (a fill value, a clamp bound) outside ``[-limit, limit]``."""
    return isinstance(value, float) and math.isfinite(value) and abs(value) > limit


def _compute_users(node: fx.Node, roles: dict[fx.Node, Role]) -> list[fx.Node]:
    """The half-precision nodes that read ``node``, looking through data movement."""
    found, stack, seen = [], list(node.users), set()
    while stack:
        user = stack.pop()
        if user in seen or user.op != "call_function":
            continue
        seen.add(user)
        if roles[user] is Role.FOLLOW:
            stack.extend(user.users)
        elif roles[user] in (Role.HALF, Role.LIGHT):
            found.append(user)
    return found


def _attr(module: torch.nn.Module, target: str) -> torch.Tensor:
    owner, name = _owner(module, target)
    return getattr(owner, name)


def _cast_parameters(module, roles, dtype, fake_mode, stats: CastStats) -> None:
    """Store each float parameter/buffer in half when some consumer computes in half."""
    for node in module.graph.nodes:
        if node.op != "get_attr" or not _is_castable(node):
            continue
        if _wants_half(node, roles):
            owner, name = _owner(module, node.target)
            value = getattr(owner, name)
            if isinstance(value, torch.nn.Parameter):
                value.data = value.data.to(dtype)
            elif name in getattr(owner, "_buffers", {}):
                owner._buffers[name] = value.to(dtype)
            else:
                setattr(owner, name, value.to(dtype))
            node.meta["val"] = fake_mode.from_tensor(getattr(owner, name), static_shapes=True)
            node.meta.pop("tensor_meta", None)
            stats.half_tensors += 1
        else:
            stats.fp32_tensors += 1


def _wants_half(node: fx.Node, roles: dict[fx.Node, Role]) -> bool:
    stack, seen = list(node.users), set()
    while stack:
        user = stack.pop()
        if user in seen or user.op != "call_function":
            continue
        seen.add(user)
        role = roles[user]
        if role in (Role.HALF, Role.LIGHT):
            return True
        if role is Role.FOLLOW:
            stack.extend(user.users)
    return False


def _compute_dtype(
    node: fx.Node, role: Role, dtype: torch.dtype, light_follows: bool
) -> torch.dtype | None:
    """The dtype ``node`` computes in, or None when it does not choose (views, casts)."""
    if role is Role.HALF:
        return dtype
    if role in (Role.KEEP, Role.OPAQUE):
        return torch.float32
    if role is Role.LIGHT:
        varying = [n for n in _float_inputs(node) if not _is_constant(n)]
        if light_follows and varying and all(n.meta["val"].dtype == torch.float32 for n in varying):
            return torch.float32
        return dtype
    return None


def _is_constant(node: fx.Node) -> bool:
    """A parameter or buffer, possibly behind views and casts: it adapts to its consumer."""
    while node.op == "call_function" and len(node.all_input_nodes) == 1:
        node = node.all_input_nodes[0]
    return node.op == "get_attr"


def _record(node: fx.Node, want: torch.dtype, stats: CastStats) -> None:
    """Note the precision a float-computing node ended up in."""
    val = node.meta.get("val")
    if not (_float_inputs(node) or (isinstance(val, torch.Tensor) and val.dtype in CASTABLE)):
        return  # integer or boolean work (a mask's sum): no precision to speak of
    name = op_name(node) or str(node.target)
    if want != torch.float32:
        node.meta[PRECISION_KEY] = "half"
        stats.half_ops[name] += 1
    else:
        node.meta[PRECISION_KEY] = "fp32"
        stats.fp32_ops[name] += 1


def _make_cast(graph, source: fx.Node, want: torch.dtype, fake_mode, why: str) -> fx.Node:
    cast = graph.call_function(CAST, (source,), {"dtype": want})
    _propagate(cast, fake_mode)
    cast.meta[CAST_KEY] = why
    return cast


def _cast_inputs(graph, node, want: torch.dtype, casts, fake_mode, stats: CastStats) -> None:
    for source in _float_inputs(node):
        if source.meta["val"].dtype == want:
            continue
        key = (source, want)
        if key not in casts:
            why = f"{source.meta['val'].dtype} -> {want} for {node.name}"
            with graph.inserting_before(node):
                cast = _make_cast(graph, source, want, fake_mode, why)
            if "nn_module_stack" in node.meta:
                cast.meta["nn_module_stack"] = node.meta["nn_module_stack"]
            casts[key] = cast
            stats.casts += 1
        node.replace_input_with(source, casts[key])


def _cast_outputs(graph, output: fx.Node, casts, fake_mode, stats: CastStats) -> None:
    for source in output.all_input_nodes:
        val = source.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype in CASTABLE and val.dtype != torch.float32:
            key = (source, torch.float32)
            if key not in casts:
                with graph.inserting_before(output):
                    why = "model output back to float32"
                    casts[key] = _make_cast(graph, source, torch.float32, fake_mode, why)
                stats.casts += 1
            output.replace_input_with(source, casts[key])


def _retarget_assert(node: fx.Node) -> None:
    """``_assert_tensor_metadata(x, dtype=float32)`` must follow x to its new dtype."""
    (source,) = node.args[:1]
    val = source.meta.get("val") if isinstance(source, fx.Node) else None
    wanted = node.kwargs.get("dtype")
    if isinstance(val, torch.Tensor) and wanted in CASTABLE and val.dtype != wanted:
        node.kwargs = {**node.kwargs, "dtype": val.dtype}


def _propagate(node: fx.Node, fake_mode) -> None:
    """Recompute ``meta["val"]`` from the inputs' fake tensors (the true output dtype)."""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val"))
    with fake_mode:
        node.meta["val"] = node.target(*args, **kwargs)
    node.meta.pop("tensor_meta", None)


def _float_inputs(node: fx.Node) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if _is_castable(n)]


def _is_castable(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype in CASTABLE


def _owner(module: torch.nn.Module, target: str) -> tuple[torch.nn.Module, str]:
    *path, name = target.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    return owner, name
