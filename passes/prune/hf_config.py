"""The Hugging Face ``config.json`` after pruning: the new sizes under the model's own keys.

Heads and FFN widths go under whichever key the config already uses (``num_attention_heads``
/ ``n_head``, ``intermediate_size`` / ``n_inner``, ...): one number when every layer has the
same size, a per-layer list when they differ. With heads removed, ``hidden_size /
num_attention_heads`` no longer gives the head size, so ``head_dim`` is written too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KEYS = {
    "heads": ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"),
    "ffn": ("intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim", "d_ff"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
}
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers")


def updated_config(
    config: dict[str, Any], sizes: Sequence[tuple[str, int, int, int]]
) -> tuple[dict[str, Any], list[str]]:
    """``sizes``: ``(kind, size before, size after, unit)`` per group, in graph order.

    Returns the new config and notes on sizes it could not record.
    """
    new, notes = dict(config), []
    layers = next((config[k] for k in LAYER_KEYS if isinstance(config.get(k), int)), None)
    for kind, keys in KEYS.items():
        found = [s for s in sizes if s[0] == kind]
        if not found or all(before == after for _, before, after, _ in found):
            continue
        key = next((k for k in keys if k in config), None)
        if key is None:
            notes.append(f"config.json has no key for the {kind} size; left as it was")
            continue
        after = [a for _, _, a, _ in found]
        if kind == "hidden" or len(set(after)) == 1:
            new[key] = after[0]
        elif layers == len(after):
            new[key] = after
        else:
            notes.append(f"{len(after)} {kind} groups for {layers} layers; {key} left as it was")
            continue
        if kind == "heads" and "head_dim" not in config:
            new["head_dim"] = found[0][3]
    return new, notes
