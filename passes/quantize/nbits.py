"""Block-wise n-bit weights: the packed layout, round-to-nearest, and ``fxopt::matmul_nbits``.

The layout is ONNX Runtime's ``com.microsoft::MatMulNBits`` (contrib op, checked against the
installed ``onnxruntime``'s schema and its ``quantize_matmul_{4,8}bits`` quantizers), so a
graph lowers to that op with its constants as they are:

- the logical weight is ``W [N, K]`` (a linear's ``[out, in]``), quantized in blocks of
  ``block_size`` consecutive input features of one output row: ``k_blocks = K / block_size``;
- ``packed_weight``: uint8 ``[N, k_blocks, block_size * bits / 8]``; 4-bit values two to a
  byte, the first in the low nibble;
- ``scales``: float32 ``[N, k_blocks]``;
- ``zero_points``: uint8 ``[N, ceil(k_blocks * bits / 8)]``, packed like the weight (4-bit:
  two blocks to a byte), or absent: then the zero point is ``2 ** (bits - 1)`` (symmetric);
- ``W[n, k] = (q[n, k] - zero_point[n, k // block_size]) * scale[n, k // block_size]``.

Round to nearest (:func:`quantize_rtn`) computes what ONNX Runtime's own block quantizer
(MLAS, used by ``onnxruntime.quantization.matmul_nbits_quantizer``) computes, bit for bit:
symmetric takes the value of largest magnitude ``v`` of a block and ``scale = v / -2^(b-1)``
(so ``v`` lands exactly on ``-2^(b-1)`` and all ``2^b`` levels are used); asymmetric spans
``[min(x, 0), max(x, 0)]`` with ``scale = range / (2^b - 1)`` and a rounded zero point.

``fxopt::matmul_nbits(x, packed_weight, scales, zero_points, bias, K, N, bits, block_size,
accuracy_level)`` is the op the ``quantize.weight_only`` pass writes into the graph. Its CPU
(and any-device) kernel here unpacks, dequantizes and runs ``linear`` in float32: the
reference, correct and slow (the weight is dequantized on every call). Its fake kernel lets
``torch.export`` re-export the graph, and :mod:`.nbits_onnx` translates it to
``MatMulNBits``. The torch backend saves the op as it is and, when it loads a ``.pt2`` on a
CPU with AVX2/AVX512, rewrites each 4-bit one once to torch's int4 kernel
(``fxopt::matmul_int4pack``, ``aten._weight_int4pack_mm_for_cpu``, computed in bfloat16: see
:mod:`.nbits_torch`); 8-bit blocks have no such kernel in torch and keep this one.
``accuracy_level`` is ONNX Runtime's attribute of that name, carried for the lowering: 0
computes in float32 (what the kernel here computes), 4 lets ONNX Runtime quantize the
activations to int8 blocks at run time (faster on CPU, not bit-identical).
"""

from __future__ import annotations

import torch

#: bit widths this module packs (ONNX Runtime's MatMulNBits also takes 2)
BITS = (4, 8)


def k_blocks(K: int, block_size: int) -> int:
    return -(-K // block_size)


def pad_to_blocks(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """``weight [N, K]`` with zero columns up to a whole number of blocks: MatMulNBits' last
    block of a K that ``block_size`` does not divide is padded, and never read past K."""
    pad = k_blocks(weight.shape[1], block_size) * block_size - weight.shape[1]
    return torch.nn.functional.pad(weight, (0, pad)) if pad else weight


#: weights rounded at a time by :func:`quantize_rtn`: its float temporaries are several times
#: the rows they round, so a whole LM head (128k x 2048) at once would hold GBs of them
ROUND_ELEMENTS = 2**24


def quantize_rtn(
    weight: torch.Tensor, bits: int, block_size: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round ``weight [N, K]`` to nearest, block-wise along K (``K % block_size == 0``).

    Returns ``(q, scales, zero_points)``: q uint8 ``[N, K]`` in ``[0, 2^bits)``, scales
    float32 ``[N, k_blocks]``, zero points uint8 ``[N, k_blocks]`` (``2^(bits-1)`` when
    symmetric). Rows are rounded ``ROUND_ELEMENTS`` weights at a time (each row's blocks are
    its own: the same numbers as all at once)."""
    rows = max(1, ROUND_ELEMENTS // max(1, weight.shape[1]))
    parts = [_round_rows(chunk, bits, block_size, symmetric) for chunk in weight.split(rows)]
    if len(parts) == 1:
        return parts[0]
    q, scales, zero_points = (torch.cat(column) for column in zip(*parts, strict=True))
    return q, scales, zero_points


def _round_rows(
    weight: torch.Tensor, bits: int, block_size: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scales, zero_points = block_params(weight, bits, block_size, symmetric)
    return quantize_with(weight, scales, zero_points, bits, block_size), scales, zero_points


def block_params(
    weight: torch.Tensor, bits: int, block_size: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of every block of ``weight [N, K]`` (see the module docstring);
    ``K`` may be one block (GPTQ asks one group at a time)."""
    N, K = weight.shape
    blocks = weight.detach().float().reshape(N, K // block_size, block_size)
    levels = 2**bits - 1
    if symmetric:
        at = blocks.abs().argmax(dim=-1, keepdim=True)
        peak = blocks.gather(-1, at).squeeze(-1)
        scales = peak / -float(2 ** (bits - 1))
        zero_points = torch.full_like(scales, 2 ** (bits - 1))
    else:
        low = blocks.amin(dim=-1).clamp(max=0.0)
        high = blocks.amax(dim=-1).clamp(min=0.0)
        scales = (high - low) / float(levels)
        safe = torch.where(scales != 0, scales, torch.ones_like(scales))
        zero = torch.where(scales != 0, 0.0 - low / safe, low)
        zero_points = _round_half_away(zero).clamp(0, levels)
    return scales.float(), zero_points.to(torch.uint8)


def quantize_with(
    weight: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    bits: int,
    block_size: int,
) -> torch.Tensor:
    """``weight [N, K]`` on the given block grid: uint8 ``[N, K]`` in ``[0, 2^bits)``."""
    N, K = weight.shape
    blocks = weight.detach().float().reshape(N, -1, block_size)
    q = to_grid(blocks, scales.unsqueeze(-1), zero_points.unsqueeze(-1), bits)
    return q.reshape(N, K)


def to_grid(
    values: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, bits: int
) -> torch.Tensor:
    """``values`` rounded onto the grid of (broadcastable) ``scales`` and ``zero_points``:
    ``round(x * (1 / scale) + zero point)`` half away from zero, clamped to ``[0, 2^bits)``
    (MLAS's arithmetic; a zero scale maps everything to the zero point)."""
    safe = torch.where(scales != 0, scales, torch.ones_like(scales))
    reciprocal = torch.where(scales != 0, 1.0 / safe, torch.zeros_like(scales))
    x = values.float() * reciprocal + zero_points.float()
    return _round_half_away(x).clamp(0, 2**bits - 1).to(torch.uint8)


def dequantize_values(
    q: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Float32 ``[N, K]`` from unpacked ``q [N, K]`` and per-block parameters."""
    N, K = q.shape
    blocks = q.float().reshape(N, -1, block_size) - zero_points.float().unsqueeze(-1)
    return (blocks * scales.float().unsqueeze(-1)).reshape(N, K)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


# -- packing -------------------------------------------------------------------------------


def pack_weight(q: torch.Tensor, bits: int, block_size: int) -> torch.Tensor:
    """uint8 ``q [N, K]`` -> ``[N, k_blocks, block_size * bits / 8]`` (MatMulNBits' B)."""
    N, K = q.shape
    blocks = q.to(torch.uint8).reshape(N, K // block_size, block_size)
    return _pack_last(blocks, bits)


def unpack_weight(packed: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """Inverse of :func:`pack_weight`: uint8 ``[N, K]``."""
    N = packed.shape[0]
    return _unpack_last(packed, bits).reshape(N, -1)[:, :K]


def pack_zero_points(zero_points: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 ``[N, k_blocks]`` -> ``[N, ceil(k_blocks * bits / 8)]`` (an odd count of 4-bit
    zero points leaves the last high nibble 0, which no block reads)."""
    per_byte = 8 // bits
    pad = (-zero_points.shape[-1]) % per_byte
    if pad:
        zero_points = torch.nn.functional.pad(zero_points, (0, pad))
    return _pack_last(zero_points.to(torch.uint8), bits)


def unpack_zero_points(packed: torch.Tensor, bits: int, blocks: int) -> torch.Tensor:
    return _unpack_last(packed, bits)[..., :blocks]


def _pack_last(values: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return values.contiguous()
    if bits != 4:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")
    pairs = values.reshape(*values.shape[:-1], -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()


def _unpack_last(packed: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return packed
    if bits != 4:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)


def dequantize_packed(
    packed: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    K: int,
    bits: int,
    block_size: int,
) -> torch.Tensor:
    """The float32 ``W [N, K]`` a MatMulNBits weight stands for."""
    blocks = k_blocks(K, block_size)
    q = unpack_weight(packed, bits, blocks * block_size)  # the last block padded
    if zero_points is None:
        zero = torch.full(scales.shape, 2 ** (bits - 1), dtype=torch.uint8, device=q.device)
    else:
        zero = unpack_zero_points(zero_points, bits, blocks)
    return dequantize_values(q, scales.reshape(-1, blocks), zero, block_size)[:, :K]


# -- the op ---------------------------------------------------------------------------------


@torch.library.custom_op("fxopt::matmul_nbits", mutates_args=())
def matmul_nbits(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    bias: torch.Tensor | None,
    K: int,
    N: int,
    bits: int,
    block_size: int,
    accuracy_level: int = 0,
) -> torch.Tensor:
    """``linear(x, dequantize(packed_weight), bias)``: see the module docstring."""
    weight = dequantize_packed(packed_weight, scales, zero_points, K, bits, block_size)
    return torch.nn.functional.linear(x, weight.to(x.dtype), bias)


@matmul_nbits.register_fake
def _(x, packed_weight, scales, zero_points, bias, K, N, bits, block_size, accuracy_level=0):
    return x.new_empty((*x.shape[:-1], N))


MATMUL_NBITS = torch.ops.fxopt.matmul_nbits.default
