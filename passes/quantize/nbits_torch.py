"""The torch backend's fast CPU path for 4-bit ``fxopt::matmul_nbits``: torch's int4 kernel.

``fxopt::matmul_nbits``'s own kernel (:mod:`.nbits`) unpacks and dequantizes the whole
weight on every call. torch ships a CPU int4 weight-only matmul (the "tinygemm" kernel
torchao's ``Int4OpaqueTensor`` runs): ``aten._weight_int4pack_mm_for_cpu(x, packed,
group_size, scales_and_zeros)``, its weight packed by ``aten._convert_weight_to_int4pack_for_cpu(
q_int32 [N, K], 1)``, with ``scales_and_zeros`` ``[k_groups, N, 2]`` and the affine form
``W = (q - 8) * scale + zero``. A MatMulNBits block maps to it exactly in real numbers:
``(q - zp) * s = (q - 8) * s + (8 - zp) * s``, so ``zero = (8 - zp) * s`` (0 when symmetric).

What the kernel takes (measured with torch 2.13 on x86):

- ``group_size`` 32, 64, 128 or 256; ``N`` a multiple of 16 (fewer rows are padded here
  with zero-weight rows, and the output sliced back); ``K`` a whole number of groups
  (MatMulNBits' padded last block: the activations get zero columns to match).
- Activations, scales and zeros all of one dtype. Only **bfloat16** is vectorized (AVX2 and
  AVX512 kernels; ~0.11 ms for a 4864x896 decode step on one AVX512 core, where the float32
  ``linear`` takes ~0.28 ms and the reference kernel ~9 ms); float32 and float16 take a
  scalar loop (~10 ms for that step, per row of activations), slower than the reference. So
  the kernel here casts the activations to bfloat16 and the output back: scales, zeros,
  activations and the output are rounded to bfloat16 (8-bit mantissa), accumulation is in
  float32. Against the float32 reference its outputs differ by a relative ~2^-9 (the
  output's own bfloat16 rounding dominates): see ``tests/passes/test_nbits_torch.py``.
- The packed layout depends on the CPU the process dispatches to (``AVX512`` packs
  differently from ``AVX2`` and from the scalar ``DEFAULT``): it is not a file format.

Hence the design: the ``.pt2`` keeps the portable ``fxopt::matmul_nbits`` (ONNX Runtime's
layout, what ``nbits_onnx`` lowers), and :func:`use_int4_kernel` rewrites the *loaded*
module once, at load time, on the machine that runs it: each eligible node becomes
``fxopt::matmul_int4pack`` reading constants packed for this CPU, and the ORT-layout
constants are dropped (the same bytes: ``N * K / 2`` packed plus bfloat16 scale/zero pairs,
the size of the float32 scales). Eligible: 4-bit, a block size the kernel takes, constant
weights, a CPU whose capability is ``AVX2`` or ``AVX512`` (elsewhere the scalar fallback is
slower than the reference, so the graph is left alone), floating activations of float32
or bfloat16. 8-bit blocks keep the reference kernel: torch's ``_weight_int8pack_mm`` takes one
scale per output row (not per block) and is fast only in bfloat16 too; a loop of it over the
blocks measured slower than the float32 ``linear`` at block size 32 (0.5 ms vs 0.28 ms for
4864x896, one row), so nothing is wired for int8.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .graph_edit import add_constant, attr_tensor
from .nbits import MATMUL_NBITS, k_blocks, unpack_weight, unpack_zero_points

aten = torch.ops.aten

#: group sizes ``_weight_int4pack_mm_for_cpu`` takes
GROUP_SIZES = (32, 64, 128, 256)
#: ``_convert_weight_to_int4pack_for_cpu`` wants N a multiple of this
N_MULTIPLE = 16
#: CPU capabilities (``torch.backends.cpu.get_cpu_capability()``) with a vectorized kernel
FAST_CAPABILITIES = ("AVX2", "AVX512")
#: activation dtypes rewritten (computed in bfloat16 either way)
ACTIVATION_DTYPES = (torch.float32, torch.bfloat16)
#: weights packed at a time by :func:`to_int4pack` (its int32 copy is 4 bytes a weight); the
#: packing is row-block by row-block, so rows packed in multiples of 64 concatenate exactly
PACK_ELEMENTS = 2**22
PACK_ROWS = 64


def kernel_available() -> str | None:
    """Why torch's int4 kernel is not used in this process (``None``: it is)."""
    if not hasattr(aten, "_weight_int4pack_mm_for_cpu") or not hasattr(
        aten, "_convert_weight_to_int4pack_for_cpu"
    ):
        return f"torch {torch.__version__} has no _weight_int4pack_mm_for_cpu"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in FAST_CAPABILITIES:
        return f"CPU capability {capability}: torch's int4 kernel is not vectorized there"
    return None


def to_int4pack(
    packed_weight: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    K: int,
    N: int,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A MatMulNBits 4-bit weight as ``(packed, scales_and_zeros)`` for
    ``_weight_int4pack_mm_for_cpu``: uint8 ``[N', K' / 2]`` (this CPU's layout) and bfloat16
    ``[k_blocks, N', 2]``, ``K'`` the padded K and ``N'`` N rounded up to 16."""
    blocks = k_blocks(K, block_size)
    padded_k = blocks * block_size
    scales = scales.reshape(N, blocks).float()
    if zero_points is None:
        zeros = torch.zeros_like(scales)
    else:
        zp = unpack_zero_points(zero_points, 4, blocks).float()
        zeros = (8.0 - zp) * scales
    pad_n = (-N) % N_MULTIPLE
    rows = max(PACK_ROWS, PACK_ELEMENTS // padded_k // PACK_ROWS * PACK_ROWS)
    parts = []
    for start in range(0, N, rows):
        q = unpack_weight(packed_weight[start : start + rows], 4, padded_k).to(torch.int32)
        if start + rows >= N and pad_n:
            # zero-weight rows: q = 8 with scale 0 and zero 0
            q = torch.nn.functional.pad(q, (0, 0, 0, pad_n), value=8)
        parts.append(aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1))
    weight = parts[0] if len(parts) == 1 else torch.cat(parts)
    if pad_n:
        scales = torch.nn.functional.pad(scales, (0, 0, 0, pad_n))
        zeros = torch.nn.functional.pad(zeros, (0, 0, 0, pad_n))
    scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1)
    return weight, scales_and_zeros.to(torch.bfloat16).contiguous()


@torch.library.custom_op("fxopt::matmul_int4pack", mutates_args=())
def matmul_int4pack(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales_and_zeros: torch.Tensor,
    bias: torch.Tensor | None,
    K: int,
    N: int,
    group_size: int,
) -> torch.Tensor:
    """``fxopt::matmul_nbits`` for 4 bits on this CPU: see the module docstring.
    ``weight`` and ``scales_and_zeros`` come from :func:`to_int4pack`."""
    padded_k = scales_and_zeros.shape[0] * group_size
    rows = x.reshape(-1, K).to(torch.bfloat16)
    if padded_k != K:
        rows = torch.nn.functional.pad(rows, (0, padded_k - K))
    y = aten._weight_int4pack_mm_for_cpu(rows.contiguous(), weight, group_size, scales_and_zeros)
    if y.shape[-1] != N:
        y = y[:, :N]
    y = y.to(x.dtype).reshape(*x.shape[:-1], N)
    return y if bias is None else y + bias


@matmul_int4pack.register_fake
def _(x, weight, scales_and_zeros, bias, K, N, group_size):
    return x.new_empty((*x.shape[:-1], N))


MATMUL_INT4PACK = torch.ops.fxopt.matmul_int4pack.default
_NBITS_ARGS = [a.name for a in MATMUL_NBITS._schema.arguments]


def use_int4_kernel(gm: GraphModule) -> int:
    """Rewrite every eligible ``fxopt::matmul_nbits`` of ``gm`` (a loaded ``.pt2``'s module)
    to ``fxopt::matmul_int4pack``, its constants packed for this CPU; returns how many."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == MATMUL_NBITS]
    if not nodes or kernel_available() is not None:
        return 0
    rewritten = 0
    for node in nodes:
        args = _arguments(node)
        if not _eligible(args):
            continue
        tensors = [
            None if args[key] is None else attr_tensor(gm, args[key])
            for key in ("packed_weight", "scales", "zero_points")
        ]
        K, N, block_size = args["K"], args["N"], args["block_size"]
        weight, scales_and_zeros = to_int4pack(*tensors, K, N, block_size)
        base = str(args["packed_weight"].target).replace(".", "_")
        graph = gm.graph
        with graph.inserting_before(node):
            reads = [
                graph.get_attr(add_constant(gm, f"{base}_{suffix}", tensor))
                for suffix, tensor in (("int4pack", weight), ("scales_and_zeros", scales_and_zeros))
            ]
            new = graph.call_function(
                MATMUL_INT4PACK, (args["x"], *reads, args["bias"], K, N, block_size)
            )
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        for key in ("packed_weight", "scales", "zero_points"):
            _drop_if_unread(gm, args[key])
        rewritten += 1
    if rewritten:
        gm.graph.lint()
        gm.recompile()
    return rewritten


def _arguments(node: Node) -> dict:
    """``node``'s arguments by the op's parameter names (defaults filled in)."""
    values = dict(zip(_NBITS_ARGS, node.args, strict=False))
    values.update(node.kwargs)
    for argument in MATMUL_NBITS._schema.arguments:
        if argument.name not in values:
            values[argument.name] = argument.default_value if argument.has_default_value() else None
    return values


def _eligible(args: dict) -> bool:
    if args["bits"] != 4 or args["block_size"] not in GROUP_SIZES:
        return False
    constants = [args["packed_weight"], args["scales"], args["zero_points"]]
    if not all(c is None or (isinstance(c, Node) and c.op == "get_attr") for c in constants):
        return False
    x = args["x"]
    value = x.meta.get("val") if isinstance(x, Node) else None
    # without a recorded dtype, the kernel still computes any float input in bfloat16
    return value is None or value.dtype in ACTIVATION_DTYPES


def _drop_if_unread(gm: GraphModule, node: Node | None) -> None:
    """Erase a ``get_attr`` nothing reads any more, and its tensor when no other reads it."""
    if node is None or node.users:
        return
    target = str(node.target)
    gm.graph.erase_node(node)
    if any(n.op == "get_attr" and str(n.target) == target for n in gm.graph.nodes):
        return
    owner_path, _, attr = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if hasattr(owner, attr):
        delattr(owner, attr)
