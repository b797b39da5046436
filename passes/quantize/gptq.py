"""GPTQ: block-wise n-bit weights that minimise the layer's output error on calibration data.

Frantar, Ashkboos, Hoefler and Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023, arXiv:2210.17323 (Algorithm 1). For a linear
``y = W x`` with calibration inputs ``X [tokens, K]`` it minimises ``||W X^T - Q X^T||^2``
over quantized ``Q``, one input column at a time: column ``k`` is rounded to the grid, and
its rounding error, scaled by the inverse Hessian ``H^-1 = (2 X^T X)^-1``, is spread over the
columns not yet quantized (the optimal-brain-surgeon update). What makes it practical, as in
the paper:

- the inverse Hessian's rows are read from its Cholesky factor (``H^-1 = U^T U``, upper ``U``,
  computed once): row ``k`` of ``U`` is exactly what the update of step ``k`` needs, and the
  factorisation is numerically stable where repeated rank-one downdates of ``H^-1`` are not;
- "lazy batches": the updates are applied within a batch of ``lazy_batch`` columns (128 in
  the paper) immediately, and to the rest of the matrix once per batch, as one matrix
  product (the algorithm is memory-bound otherwise);
- dampening: ``percdamp`` x the mean of ``diag(H)`` is added to the diagonal (1% in the
  paper) so that ``H`` is safely positive definite; an input feature that is zero on every
  calibration token (``H[k, k] = 0``) gets weight 0, as in the reference implementation.

The quantization grid is :mod:`.nbits`' block-wise one (ONNX Runtime's MatMulNBits layout):
a block's scale and zero point are chosen, as in the reference implementation's
``groupsize`` mode, from the block's weights as they stand when GPTQ reaches its first
column (earlier columns' updates included). Columns are taken in their natural order
(``act_order``, the paper's later heuristic, is not implemented: with block-wise scales it
needs a column permutation MatMulNBits cannot express without the deprecated ``g_idx``).
"""

from __future__ import annotations

import torch

from .nbits import block_params, to_grid

#: columns updated together before the rest of the matrix is (the paper's B)
LAZY_BATCH = 128


class HessianError(ValueError):
    """``H`` stayed singular after dampening (the caller falls back to round to nearest)."""


class Hessian:
    """``H = 2 / n * sum_i x_i x_i^T`` over the calibration tokens seen so far (float64)."""

    def __init__(self, features: int) -> None:
        self.matrix = torch.zeros(features, features, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Add every row of ``x [..., K]`` (one token each)."""
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if rows.shape[0] == 0:
            return
        total = self.tokens + rows.shape[0]
        self.matrix *= self.tokens / total
        self.matrix += (2.0 / total) * rows.T @ rows
        self.tokens = total


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    block_size: int,
    symmetric: bool,
    percdamp: float = 0.01,
    lazy_batch: int = LAZY_BATCH,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of ``weight [N, K]`` (``K % block_size == 0``) under ``hessian [K, K]``.

    Returns what :func:`~.nbits.quantize_rtn` returns: ``(q uint8 [N, K], scales [N,
    k_blocks], zero points uint8 [N, k_blocks])``. ``lazy_batch`` must be a multiple of
    ``block_size`` (blocks never straddle two lazy batches)."""
    if lazy_batch % block_size:
        raise ValueError(f"lazy_batch {lazy_batch} is not a multiple of block_size {block_size}")
    W = weight.detach().float().clone()
    N, K = W.shape
    H = hessian.detach().to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = _inverse_cholesky(H, percdamp).float()

    q = torch.zeros(N, K, dtype=torch.uint8)
    blocks = K // block_size
    scales = torch.zeros(N, blocks)
    zero_points = torch.zeros(N, blocks, dtype=torch.uint8)
    for start in range(0, K, lazy_batch):
        end = min(start + lazy_batch, K)
        W1 = W[:, start:end].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[start:end, start:end]
        scale = zero = None
        for i in range(end - start):
            column = start + i
            if column % block_size == 0:
                # the block's grid, from its weights as they stand now (updates included)
                block = W1[:, i : i + block_size]
                s, z = block_params(block, bits, block_size, symmetric)
                scales[:, column // block_size] = s[:, 0]
                zero_points[:, column // block_size] = z[:, 0]
                scale, zero = s, z
            w = W1[:, i : i + 1]
            qi = to_grid(w, scale, zero, bits)
            q[:, column] = qi[:, 0]
            dequantized = (qi.float() - zero.float()) * scale
            error = (w - dequantized) / U1[i, i]
            W1[:, i:] -= error @ U1[i : i + 1, i:]
            Err1[:, i : i + 1] = error
        W[:, end:] -= Err1 @ U[start:end, end:]
    return q, scales, zero_points


def _inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1``; dampening grows (x10, three times)
    while ``H`` is not positive definite."""
    mean = float(torch.diagonal(H).mean())
    damp = percdamp * mean
    for _ in range(4):
        damped = H + damp * torch.eye(H.shape[0], dtype=H.dtype)
        L, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return U
        damp *= 10.0
    raise HessianError(f"the Hessian is not positive definite even with dampening {damp:g}")


def reconstruction_error(
    weight: torch.Tensor, dequantized: torch.Tensor, hessian: torch.Tensor
) -> float:
    """``||(W - Q) X^T||^2 / ||W X^T||^2`` on the calibration tokens, from ``H`` (the
    layer-wise objective GPTQ minimises, relative to the output's energy)."""
    H = hessian.double()

    def quadratic(m: torch.Tensor) -> float:  # trace(M H M^T), M [N, K]
        m = m.double()
        return float(((m @ H) * m).sum())

    energy = quadratic(weight)
    return quadratic(weight.double() - dequantized.double()) / max(energy, 1e-30)
