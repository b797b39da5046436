"""Batches of similar length, cut to their longest sequence (``group_by_length``).

Text fine-tune sets are tokenized to one ``sequence_length``; most samples are much shorter,
so most of every batch is padding that the model still computes (and attention does so
quadratically). A batch can drop its trailing columns that no row attends to without
changing any real token's result, and batches built from samples of similar length have
few such columns left. This is Hugging Face's ``group_by_length``: the epoch's shuffled
order is cut into windows of many batches, each window is sorted by length and split into
batches, and the batches are shuffled again, so the data order stays random while lengths
within a batch are close.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: batches per window sorted together: enough to find similar lengths, few enough that
#: every part of the epoch still mixes short and long batches
WINDOW_BATCHES = 50
#: kept lengths are rounded up to a multiple of this, so few distinct shapes reach the kernels
ROUND = 8


def lengths(mask: torch.Tensor) -> torch.Tensor:
    """Per sample: one past the last position the attention mask keeps (right padding)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.to(torch.bool) * positions).amax(dim=1)


def grouped(order: list[int], sample_lengths: torch.Tensor, batch: int, seed: int) -> list[int]:
    """``order`` rearranged so that each run of ``batch`` indices holds similar lengths."""
    generator = torch.Generator().manual_seed(seed)
    window = batch * WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -int(sample_lengths[i]))
        batches += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
    # the last, possibly short, batch stays last: a shorter batch mid-epoch is harmless but
    # keeping it last keeps every other batch full
    last = batches.pop() if batches and len(batches[-1]) < batch else None
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [i for b in shuffled + ([last] if last else []) for i in b]


def trim(
    batch: dict[str, torch.Tensor], teacher: list[torch.Tensor] | None
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor] | None]:
    """The batch (and token-level teacher outputs) without the trailing padding columns."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch, teacher
    width = mask.shape[1]
    longest = int(lengths(mask.cpu()).max())
    keep = min(width, -(-max(longest, 1) // ROUND) * ROUND)
    if keep == width:
        return batch, teacher

    def cut(t: torch.Tensor, rank: int) -> torch.Tensor:
        return t[:, :keep] if t.dim() >= rank and t.shape[:2] == mask.shape else t

    # inputs and token labels are [batch, sequence]; teacher token states [batch, sequence,
    # features] (a pooled [batch, features] output is never cut, whatever its width)
    cut_teacher = [cut(t, 3) for t in teacher] if teacher is not None else None
    return {k: cut(v, 2) for k, v in batch.items()}, cut_teacher


def run_by_length(
    fn: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]],
    tensors: dict[str, torch.Tensor],
    batch: int,
) -> list[torch.Tensor]:
    """``fn`` over all samples of ``tensors`` in batches of similar length, each cut to its
    longest sequence; the outputs come back in sample order, token outputs (``[batch,
    sequence, ...]``) padded back to the full width with zeros, where the mask hides them."""
    mask = tensors["attention_mask"]
    order = torch.argsort(lengths(mask), descending=True, stable=True)
    pieces = []
    for start in range(0, len(order), batch):
        index = order[start : start + batch]
        cut, _ = trim({k: v[index] for k, v in tensors.items()}, None)
        pieces.append((index, cut["attention_mask"].shape[1], fn(cut)))
    outputs = []
    for position in range(len(pieces[0][2])):
        values = [(index, width, outs[position]) for index, width, outs in pieces]
        tokens = all(v.dim() >= 3 and v.shape[1] == width for _, width, v in values)
        first = values[0][2]
        rest = (mask.shape[1], *first.shape[2:]) if tokens else tuple(first.shape[1:])
        full = torch.zeros((len(order), *rest), dtype=first.dtype)
        for index, width, value in values:
            if tokens:
                full[index, :width] = value
            else:
                full[index] = value
        outputs.append(full)
    return outputs
