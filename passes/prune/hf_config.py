"""The Hugging Face ``config.json`` after pruning: the new sizes under the model's own keys.

Heads and FFN widths go under whichever key the config already uses (``num_attention_heads``
/ ``n_head`` / DistilBERT's ``n_heads``, ``intermediate_size`` / ``n_inner`` / DistilBERT's
``hidden_dim``, ...): one number when every layer has the same size, a per-layer list when
they differ. With heads removed, ``hidden_size / num_attention_heads`` no longer gives the
head size, so ``head_dim`` is written too; a multi-head model that names its key/value heads
(``num_key_value_heads`` equal to the heads, as Llama writes it) gets those updated with them.
Under grouped-query attention the model's heads are the key/value heads times the query heads
per key/value head, two groups each pruned on its own: ``num_attention_heads`` is their
product, ``num_key_value_heads`` the first (:func:`head_counts`).

A config that does not describe the weights next to it is a broken output, so the pass asks
first (:func:`unexpressed`) which groups the config *cannot* describe, and leaves those whole:
a width with no key at all (a classifier's pooler, a kind the config has no key for: conv
channels, which transformers builds from a model's own widths such as ResNet's
``hidden_sizes``), a second
group of one kind in one layer (one size per layer is all a key holds), a group outside the
numbered layers, or one whose size is not the key's. Whatever still cannot be written is an
error of the pass (:func:`updated_config`'s notes), never a warning next to a stale file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .group import Group

KEYS = {
    "heads": ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads",),
    "ffn": ("intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim", "d_ff", "hidden_dim"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
}
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "n_layers")
#: kinds a config holds once per layer (one number, or a list with one entry per layer)
LAYERED = ("heads", "kv_heads", "ffn")
#: key/value heads, updated with the heads when they equal them (multi-head attention)
KV_KEYS = ("num_key_value_heads",)
#: why a Hugging Face model's conv groups stay whole
UNDESCRIBED_CONV = "left whole (the model is rebuilt from its config's layer widths)"


def config_key(config: Mapping[str, Any], kind: str) -> str | None:
    """The key ``config`` keeps ``kind``'s size under (``None``: it has none)."""
    return next((k for k in KEYS[kind] if k in config), None)


def layer_count(config: Mapping[str, Any]) -> int | None:
    return next((config[k] for k in LAYER_KEYS if isinstance(config.get(k), int)), None)


def layer_index(group: Group) -> int | None:
    """The layer a group belongs to: the first number in its first producer's module path
    (``model.layers.3.mlp.gate_proj`` -> 3); ``None`` outside the numbered layers."""
    path = group.producers[0] if group.producers else group.name
    return next((int(part) for part in path.split(".") if part.isdigit()), None)


def unexpressed(
    config: Mapping[str, Any], groups: Sequence[Group], kinds: Sequence[str]
) -> dict[int, str]:
    """The prunable groups of ``kinds`` whose size ``config`` cannot record: group id ->
    reason. Pruning them would ship a config.json that does not describe the weights."""
    out: dict[int, str] = {}
    for kind in (k for k in kinds if k not in KEYS):
        # conv channels: transformers builds each convolution from the config's own widths
        # (ResNet's hidden_sizes, a bottleneck's reduction), which no key of ours records
        reason = f"config.json has no key for {kind} channels; {UNDESCRIBED_CONV}"
        out.update({g.id: reason for g in groups if g.kind == kind and g.prunable})
    layers = layer_count(config)
    by_id = {g.id: g for g in groups}
    for kind in (k for k in LAYERED if k in kinds):
        members = [g for g in groups if g.kind == kind and g.prunable]
        key = config_key(config, kind)
        if key is None:
            reason = f"config.json has no key for the {kind} size ({' / '.join(KEYS[kind])})"
            out.update({g.id: f"{reason}; left whole" for g in members})
            continue
        per_layer = Counter(layer_index(g) for g in members)
        for group in members:
            index = layer_index(group)
            value = _at(config[key], index)
            if index is None or (layers is not None and not 0 <= index < layers):
                where = f"the {layers} layers" if layers is not None else "the layers"
                reason = (
                    f"config.json has no key for this width ({key} is the {kind} size of "
                    f"{where}, and this group is outside them)"
                )
            elif per_layer[index] > 1:
                reason = (
                    f"{per_layer[index]} {kind} groups in layer {index}, and config.json "
                    f"holds one {key} per layer"
                )
            elif isinstance(value, int) and value != head_counts(group, by_id, {})[0]:
                reason = (
                    f"config.json has no key for this width ({key} is {value} in layer "
                    f"{index}, this group has {group.size})"
                )
            else:
                continue
            out[group.id] = f"{reason}; left whole"
    return out


def config_sizes(
    config: Mapping[str, Any],
    groups: Sequence[Group],
    kept: Mapping[int, int],
    left_whole: Mapping[int, str],
) -> list[tuple[str, int, int, int]]:
    """What :func:`updated_config` takes: ``(kind, size before, size after, unit)``.

    Per-layer kinds come one entry per layer, in layer order, when the config counts its
    layers and every group knows its layer (a layer whose group was left alone keeps the
    size the config gives it); otherwise, and for the other kinds, one entry per group in
    graph order. Groups fixed by design (a model output, ``head_dim``) are no layer size.
    """
    out = [
        (g.kind, g.size, kept.get(g.id, g.size), g.unit)
        for g in groups
        if not g.fixed and g.kind not in LAYERED
    ]
    by_id = {g.id: g for g in groups}
    layers = layer_count(config)
    for kind in LAYERED:
        described = [g for g in groups if g.kind == kind and g.prunable and g.id not in left_whole]
        if not described:
            continue
        key = config_key(config, kind)
        indices = [layer_index(g) for g in described]
        counts = [head_counts(g, by_id, kept) for g in described]
        if key is None or layers is None or any(i is None or i >= layers for i in indices):
            out += [(kind, *count, g.unit) for g, count in zip(described, counts, strict=True)]
            continue
        fallback = counts[0][0]
        before = [_at(config[key], i) for i in range(layers)]
        before = [b if isinstance(b, int) else fallback for b in before]
        after = list(before)
        for (_, count), index in zip(counts, indices, strict=True):
            after[index] = count  # type: ignore[index]
        unit = described[0].unit
        out += [(kind, b, a, unit) for b, a in zip(before, after, strict=True)]
    return out


def head_counts(
    group: Group, by_id: Mapping[int, Group], kept: Mapping[int, int]
) -> tuple[int, int]:
    """``(before, after)`` of the size ``config.json`` records for ``group``: its own unit
    count, except the query heads of grouped-query attention, which the config counts over
    every key/value head (the product with the partner group, each as kept)."""
    own = kept.get(group.id, group.size)
    if group.kind != "heads" or group.partner not in by_id:
        return group.size, own
    partner = by_id[group.partner]
    return group.size * partner.size, own * kept.get(partner.id, partner.size)


def updated_config(
    config: dict[str, Any], sizes: Sequence[tuple[str, int, int, int]]
) -> tuple[dict[str, Any], list[str]]:
    """``sizes``: ``(kind, size before, size after, unit)`` per group, in graph order.

    Returns the new config and notes on sizes it could not record (the pass fails on any).
    """
    new, notes = dict(config), []
    layers = layer_count(config)
    for kind, keys in KEYS.items():
        found = [s for s in sizes if s[0] == kind]
        if not found or all(before == after for _, before, after, _ in found):
            continue
        key = next((k for k in keys if k in config), None)
        if key is None:
            notes.append(f"config.json has no key for the {kind} size; left as it was")
            continue
        after = [a for _, _, a, _ in found]
        if kind == "hidden":  # one width: the one that shrank
            changed = sorted({a for _, before, a, _ in found if a != before})
            if len(changed) > 1:
                notes.append(f"hidden widths pruned to {changed}; {key} holds one")
                continue
            new[key] = changed[0]
        elif len(set(after)) == 1:
            new[key] = after[0]
        elif layers == len(after):
            new[key] = after
        else:
            notes.append(f"{len(after)} {kind} groups for {layers} layers; {key} left as it was")
            continue
        if kind == "heads":
            for kv in KV_KEYS:
                if kv in config and config[kv] == config[key]:
                    new[kv] = new[key]
            if "head_dim" not in config:
                new["head_dim"] = found[0][3]
    return new, notes


def refused_by_transformers(config: Mapping[str, Any]) -> str | None:
    """What ``transformers`` says when it builds its config class from ``config`` (``None``
    when it accepts it, or cannot tell: not installed, a model type it does not know).

    Per-layer lists (``scope = "global"``) are checked as their first layer's size: no stock
    class builds per-layer sizes, which the docs say; every other check (Llama's hidden size
    a multiple of the heads, field types) is transformers' own.
    """
    try:
        from transformers import AutoConfig
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:  # pragma: no cover - the Hugging Face loader needs it
        return None
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return None
    layered = {k for kind in LAYERED for k in KEYS[kind]}
    flat = {
        k: v[0] if k in layered and isinstance(v, list) and v else v
        for k, v in config.items()
        if k != "model_type"
    }
    try:
        AutoConfig.for_model(model_type, **flat)
    except Exception as exc:  # transformers' validation errors have no common base
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[-1] if lines else type(exc).__name__
    return None


def _at(value: Any, index: int | None) -> Any:
    """A config value for one layer: the number, or the layer's entry of a per-layer list."""
    if isinstance(value, list):
        return value[index] if index is not None and 0 <= index < len(value) else None
    return value
