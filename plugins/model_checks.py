"""Checks of a freshly loaded model, run by the loaders before any expensive step.

A NaN or an infinity in the weights makes every output NaN: capture, the passes and lowering
would all run, and the run would end in a fidelity miss blamed on ``[verify]`` or on a pass.
One ``isfinite`` per tensor right after loading names the parameter and the file instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from fxopt.engine.errors import ModelError

#: how many offending tensors a message lists by name
LISTED = 5


def check_finite_weights(
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    file: str | Path,
    locate: Callable[[str], str | Path | None] | None = None,
) -> None:
    """Raise a :class:`ModelError` naming the float tensors that hold NaN or inf.

    ``tensors`` are (name, tensor) pairs (parameters and persistent buffers; a tensor shared
    under two names is checked once); ``file`` is the model file named in the message, and
    ``locate(name)`` may give the file that holds one tensor (a shard of a sharded checkpoint).
    """
    seen: set[int] = set()
    bad: list[tuple[str, int, int]] = []
    for name, tensor in tensors:
        if id(tensor) in seen or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        seen.add(id(tensor))
        if tensor.device.type == "meta" or bool(torch.isfinite(tensor).all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        bad.append((name, nan, int((~torch.isfinite(tensor)).sum()) - nan))
    if not bad:
        return
    where = (locate(bad[0][0]) if locate else None) or file
    listed = ", ".join(f"{name} ({_count(nan, inf)})" for name, nan, inf in bad[:LISTED])
    more = f" and {len(bad) - LISTED} more" if len(bad) > LISTED else ""
    raise ModelError(
        f"the weights hold non-finite values (NaN or inf) in {len(bad)} tensor(s): "
        f"{listed}{more}; every output would be NaN",
        file=where,
        fix="re-export the weights from a healthy checkpoint (NaN usually comes from a "
        "diverged training run or an overflowing conversion, e.g. to float16)",
    )


def _count(nan: int, inf: int) -> str:
    parts = [f"{nan} NaN"] if nan else []
    return ", ".join([*parts, *([f"{inf} inf"] if inf else [])])
