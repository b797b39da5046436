"""Groups: the units a pruning decision is taken for, with the parameters they slice.

A group is a base index space (see :mod:`.spaces`) that at least one parameter is sliced
along, directly or through a derived space: the FFN neurons of one layer (the intermediate
Linear's rows and the output Linear's columns), the heads of one attention block (Q, K, V rows
and the output projection's columns, in units of ``head_dim``), a conv's channels with the
BatchNorm after it and every conv a residual add ties to them, or a transformer's hidden
width (embeddings, every LayerNorm, every residual write).

Its kind decides which ratio applies: ``heads``, ``kv_heads``, ``ffn``, ``conv``, ``hidden``
(a width that a LayerNorm or an embedding spans); ``head_dim`` and ``other`` groups are never
pruned.

A Linear's output viewed as ``[heads, head_dim]`` is a head split even where no attention op
the analysis knows tags the heads (DeBERTa folds them into the batch axis for its ``bmm``):
its minor factor is a ``head_dim`` group, kept whole and listed with the groups left alone
(never an ``ffn`` group: slicing it would shrink every head), its major factor a ``heads``
group.

Grouped-query attention (Llama, Qwen2, Mistral: fewer key/value heads than query heads, each
shared by a group of query heads) shows up as attention heads that are a *product* of two
spaces: the key/value heads and the query heads per key/value head (``repeat_kv``'s expand
and reshape). The key/value heads are a ``kv_heads`` group: removing one removes its whole
query group with it (K and V rows, the group's Q rows, the output projection's columns). The
query heads per key/value head are a ``heads`` group: removing one takes the same query head
from every group, so the groups stay equal, as the attention requires. Each group knows its
*partner* (the other factor), since the model's attention heads are their product.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from .dims import UNSAFE, Dim
from .spaces import Spaces

KINDS = ("ffn", "heads", "kv_heads", "conv", "hidden")
#: kinds whose unit is a head (``head_dim`` channels)
HEAD_KINDS = ("heads", "kv_heads")
#: why the head_dim of a head split no attention op tags is left whole
HEAD_DIM_OF_SPLIT = (
    "head_dim of a projection split into heads: kept whole, heads are pruned as units"
)


@dataclass(frozen=True)
class Slice:
    """A parameter sliced along ``axis`` by the indices its space keeps."""

    attr: str
    axis: int
    space: int


@dataclass
class Group:
    id: int
    name: str
    kind: str
    #: units (channels, or heads)
    size: int
    #: channels per unit (``head_dim`` for heads, else 1)
    unit: int
    slices: list[Slice] = field(default_factory=list)
    #: module paths whose outputs are this group's channels
    producers: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)
    #: grouped-query attention: the id of the other factor of the attention heads (the
    #: query heads per key/value head for a ``kv_heads`` group, and the reverse)
    partner: int | None = None

    @property
    def prunable(self) -> bool:
        return not self.fixed and not self.unsafe

    @property
    def parameters(self) -> list[str]:
        return sorted({s.attr for s in self.slices})

    def matches(self, pattern: str) -> bool:
        """``pattern`` (fnmatch) names this group, one of its producers or their parameters."""
        names = [self.name, *self.producers]
        names += [s.attr for s in self.slices if _module(s.attr) in self.producers]
        return any(fnmatch.fnmatchcase(name, pattern) for name in names)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "size": self.size, "unit": self.unit}


def make_groups(spaces: Spaces, producer_dims: set[Dim]) -> list[Group]:
    """One group per concrete base space that some parameter is sliced along, in the order
    of their first producing parameter (layer order)."""
    slices_of: dict[int, list[Slice]] = {}
    derived_of: dict[int, list[int]] = {}
    for space in spaces:
        for base in spaces.bases(space.id):
            derived_of.setdefault(base, []).append(space.id)
        for dim in space.attr_dims:
            for base in spaces.bases(space.id):
                slices_of.setdefault(base, []).append(Slice(dim.attr, dim.axis, space.id))
    head_dims = _head_dims(spaces)
    split_heads, split_dims = _head_splits(spaces)
    split_dims -= head_dims
    head_dims |= split_dims
    grouped = _grouped_query(spaces, head_dims)
    groups = []
    for space in spaces:
        if space.definition is not None or not space.concrete or space.size <= 1:
            continue
        slices = slices_of.get(space.id)
        if not slices:
            continue
        related = [spaces[s] for s in derived_of.get(space.id, [])]
        producers = _unique(
            _module(d.attr) for s in related for d in s.attr_dims if d in producer_dims
        )
        tags = set().union(*(s.tags for s in related))
        fixed = space.fixed_reasons
        if not producers:
            fixed = [*fixed, "no layer produces these channels"]
        kind = "head_dim" if space.id in head_dims else _kind(space.tags, tags)
        if space.id in split_heads and kind not in ("head_dim", "hidden"):
            kind = "heads"
        if space.id in split_dims:
            fixed = [*fixed, HEAD_DIM_OF_SPLIT]
        partner = None
        if space.id in grouped:
            key_value, per_group = grouped[space.id]
            kind, partner = (
                ("kv_heads", per_group) if space.id == key_value else ("heads", key_value)
            )
        groups.append(
            Group(
                id=space.id,
                name=_name(kind, producers, slices),
                kind=kind,
                size=int(space.size),
                unit=spaces.unit_width(space.id) if kind in HEAD_KINDS else 1,
                slices=slices,
                producers=producers,
                fixed=fixed,
                unsafe=space.unsafe_reasons,
                partner=partner,
            )
        )
    order = {d.attr: i for i, d in reversed(list(enumerate(spaces.of_dim))) if d.attr}
    return sorted(groups, key=lambda g: _position(g, order))


def _position(group: Group, order: dict[str, int]) -> int:
    """Where the group's first producer sits among the parameters (layer order)."""
    owned = [order[s.attr] for s in group.slices if _module(s.attr) in group.producers]
    return min(owned, default=len(order))


def _head_dims(spaces: Spaces) -> set[int]:
    """Minor factors of a product whose major factor is attention heads."""
    found = set()
    for space in spaces:
        if space.definition and space.definition[0] == "product":
            parts = space.definition[1]
            for i, part in enumerate(parts):
                if any("heads" in spaces[p].tags for p in parts[:i]):
                    found.add(part)
    return found


def _head_splits(spaces: Spaces) -> tuple[set[int], set[int]]:
    """``(heads, head_dims)``: the factors of a Linear's out-features viewed as
    ``[..., heads, head_dim]`` (the space a Linear weight's rows index, defined as a product
    of two or more parts)."""
    heads: set[int] = set()
    dims: set[int] = set()
    for space in spaces:
        if not space.definition or space.definition[0] != "product":
            continue
        parts = space.definition[1]
        if len(parts) < 2 or not {"linear", "producer"} <= space.tags:
            continue
        dims.add(parts[-1])
        heads.add(parts[-2])
    return heads - dims, dims


def _grouped_query(spaces: Spaces, head_dims: set[int]) -> dict[int, tuple[int, int]]:
    """Grouped-query attention: each base space of ``(key/value heads, query heads per
    key/value head)`` whose product is a space of attention heads, mapped to that pair."""
    found: dict[int, tuple[int, int]] = {}
    for space in spaces:
        if "heads" not in space.tags or not space.definition or space.definition[0] != "product":
            continue
        parts = [p for p in space.definition[1] if p not in head_dims]
        if len(parts) == 2 and all(spaces[p].definition is None for p in parts):
            pair = (parts[0], parts[1])
            found.setdefault(parts[0], pair)
            found.setdefault(parts[1], pair)
        else:  # heads made of three factors or more: no model known to fxopt does this
            reason = (
                f"{space.size} attention heads made of "
                f"{' x '.join(str(spaces[p].size) for p in space.definition[1])}"
            )
            for base in spaces.bases(space.id) - head_dims:
                spaces[base].reasons.add((UNSAFE, reason))
    return found


def _kind(own: set[str], related: set[str]) -> str:
    if "heads" in own:
        return "heads"
    if related & {"norm", "embedding"}:
        return "hidden"
    if "conv" in related:
        return "conv"
    if "linear" in related:
        return "ffn"
    return "other"


def _name(kind: str, producers: list[str], slices: list[Slice]) -> str:
    if kind in HEAD_KINDS and len(producers) > 1:
        prefix = _common_module(producers)
        if prefix:
            return prefix
    if producers:
        return producers[0]
    return _module(slices[0].attr)


def _common_module(paths: list[str]) -> str:
    """``a.b.query``, ``a.b.key`` -> ``a.b``."""
    common = []
    for names in zip(*(p.split(".") for p in paths), strict=False):
        if len(set(names)) > 1:
            break
        common.append(names[0])
    return ".".join(common)


def _module(attr: str) -> str:
    return attr.rpartition(".")[0] or attr


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))
