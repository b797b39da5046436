"""Index spaces: the recorded axis relations solved into sets of axes pruned together.

Axes declared the same are merged (union-find). A space with a definition is *derived*: it is
a product (a head-split view: heads × head_dim) or a concatenation (a fused QKV projection
split in three) of other spaces, and what it keeps follows from them. A space without one is
a *base* space: the unit a pruning decision is taken for. Two definitions of one space are
reconciled (the same heads × head_dim split seen in two views merges their parts); ones that
disagree make the space and its parts unsafe. A reason recorded on a derived space (a model
output, a size computed in the graph) holds for every space it is made of.

The index algebra lives here too: which indices a derived space keeps given what its base
spaces keep (:meth:`Spaces.keep`), and how a score over a derived space's indices adds up
onto one of its base spaces (:meth:`Spaces.project`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy

from .dims import COMPUTED_SIZE, FIXED, UNSAFE, Dim, Relations, Size


@dataclass
class Space:
    """One set of axes that index the same channels."""

    id: int
    size: Size
    dims: list[Dim] = field(default_factory=list)
    #: ``("product" | "concat", part space ids)`` for a derived space
    definition: tuple[str, tuple[int, ...]] | None = None
    reasons: set[tuple[str, str]] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)

    @property
    def concrete(self) -> bool:
        return isinstance(self.size, int)

    @property
    def fixed_reasons(self) -> list[str]:
        return sorted(r for level, r in self.reasons if level == FIXED)

    @property
    def unsafe_reasons(self) -> list[str]:
        return sorted(r for level, r in self.reasons if level == UNSAFE)

    @property
    def attr_dims(self) -> list[Dim]:
        return [d for d in self.dims if d.attr is not None]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Dim, Dim] = {}

    def find(self, x: Dim) -> Dim:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Dim, b: Dim) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[rb] = ra
        return True


class Spaces:
    """The solved spaces of one graph, and the index algebra over them."""

    def __init__(self, spaces: dict[int, Space], of_dim: dict[Dim, int]) -> None:
        self.spaces = spaces
        self.of_dim = of_dim
        self._bases: dict[int, set[int]] = {}

    def __getitem__(self, space_id: int) -> Space:
        return self.spaces[space_id]

    def __iter__(self):
        return iter(self.spaces.values())

    def space(self, dim: Dim) -> Space:
        return self.spaces[self.of_dim[dim]]

    def bases(self, space_id: int) -> set[int]:
        """The base spaces a space is made of (itself, for a base space)."""
        if space_id not in self._bases:
            space = self.spaces[space_id]
            if space.definition is None:
                self._bases[space_id] = {space_id}
            else:
                self._bases[space_id] = set().union(*(self.bases(p) for p in space.definition[1]))
        return self._bases[space_id]

    def keep(self, space_id: int, base_keep: dict[int, np.ndarray]) -> np.ndarray | None:
        """Indices ``space_id`` keeps when each base space keeps ``base_keep[id]``;
        ``None`` when it keeps everything."""
        if not self.bases(space_id) & set(base_keep):
            return None
        space = self.spaces[space_id]
        if space.definition is None:
            return base_keep[space_id]
        kind, parts = space.definition
        sizes = [int(self.spaces[p].size) for p in parts]
        kept = [
            k if (k := self.keep(p, base_keep)) is not None else np.arange(n)
            for p, n in zip(parts, sizes, strict=True)
        ]
        if kind == "concat":
            offsets = np.cumsum([0, *sizes[:-1]])
            return np.concatenate([k + o for k, o in zip(kept, offsets, strict=True)])
        grid = np.ix_(*kept)
        flat = np.ravel_multi_index(tuple(np.broadcast_arrays(*grid)), sizes)
        return flat.reshape(-1)

    def project(self, space_id: int, scores: np.ndarray, base_id: int) -> np.ndarray:
        """Add up per-index ``scores`` of ``space_id`` onto the indices of base ``base_id``."""
        out = np.zeros(int(self.spaces[base_id].size))
        if base_id not in self.bases(space_id):
            return out
        space = self.spaces[space_id]
        if space.definition is None:
            return out + scores
        kind, parts = space.definition
        sizes = [int(self.spaces[p].size) for p in parts]
        if kind == "concat":
            start = 0
            for part, n in zip(parts, sizes, strict=True):
                out += self.project(part, scores[start : start + n], base_id)
                start += n
            return out
        grid = scores.reshape(sizes)
        for axis, part in enumerate(parts):
            if base_id in self.bases(part):
                other = tuple(i for i in range(len(parts)) if i != axis)
                out += self.project(part, grid.sum(axis=other), base_id)
        return out

    def unit_width(self, base_id: int) -> int:
        """Channels one index of ``base_id`` stands for in the spaces it is a factor of
        (``head_dim`` for a heads space, 1 for plain channels)."""
        width = 1
        for space in self.spaces.values():
            if space.definition and space.definition[0] == "product":
                parts = space.definition[1]
                # the part that is, or is made of, ``base_id`` (grouped-query heads are a
                # product of two bases, and the Q projection's rows a product of those heads)
                at = next((i for i, p in enumerate(parts) if base_id in self.bases(p)), None)
                if at is not None:
                    sizes = [self.spaces[p].size for p in parts[at + 1 :]]
                    if all(isinstance(s, int) for s in sizes):
                        width = max(width, int(np.prod(sizes)) if sizes else 1)
        return width


def solve(relations: Relations) -> Spaces:
    """Merge the recorded relations into :class:`Spaces`."""
    uf = _UnionFind()
    for dim in relations.sizes:
        uf.find(dim)
    for a, b in relations.same:
        uf.union(a, b)
    defs = [
        (whole, kind, _drop_unit_parts(kind, parts, relations))
        for whole, kind, parts in relations.defs
    ]
    extra_reasons: dict[Dim, set[tuple[str, str]]] = {}
    for whole, kind, parts in defs:
        if kind == "product" and len(parts) == 1:
            uf.union(whole, parts[0])
    changed = True
    while changed:
        changed = False
        by_root: dict[Dim, list[tuple[str, tuple[Dim, ...]]]] = {}
        for whole, kind, parts in defs:
            if kind == "product" and len(parts) == 1:
                continue
            by_root.setdefault(uf.find(whole), []).append((kind, parts))
        for root, found in by_root.items():
            first_kind, first_parts = found[0]
            for kind, parts in found[1:]:
                if _compatible(first_kind, first_parts, kind, parts, relations):
                    for a, b in zip(first_parts, parts, strict=True):
                        changed |= uf.union(a, b)
                else:
                    reason = (UNSAFE, "reshaped in two incompatible ways")
                    for dim in (root, *first_parts, *parts):
                        extra_reasons.setdefault(dim, set()).add(reason)
    return _build(uf, relations, defs, extra_reasons)


def _drop_unit_parts(kind: str, parts: tuple[Dim, ...], relations: Relations) -> tuple[Dim, ...]:
    """Size-1 factors of a product carry no index; concat parts of size 1 do (a CLS token)."""
    if kind != "product":
        return parts
    kept = tuple(p for p in parts if relations.sizes[p] != 1)
    return kept or parts[:1]


def _compatible(
    kind_a: str, parts_a: tuple[Dim, ...], kind_b: str, parts_b: tuple[Dim, ...], rel: Relations
) -> bool:
    if kind_a != kind_b or len(parts_a) != len(parts_b):
        return False
    return all(
        sympy.simplify(sympy.sympify(rel.sizes[a]) - sympy.sympify(rel.sizes[b])) == 0
        for a, b in zip(parts_a, parts_b, strict=True)
    )


def _build(uf, relations, defs, extra_reasons) -> Spaces:
    ids: dict[Dim, int] = {}
    spaces: dict[int, Space] = {}
    for dim in relations.sizes:
        root = uf.find(dim)
        if root not in ids:
            ids[root] = len(ids)
            spaces[ids[root]] = Space(ids[root], relations.sizes[root])
        space = spaces[ids[root]]
        space.dims.append(dim)
        space.reasons |= relations.reasons.get(dim, set()) | extra_reasons.get(dim, set())
        space.tags |= relations.tags.get(dim, set())
    of_dim = {dim: ids[uf.find(dim)] for dim in relations.sizes}
    for whole, kind, parts in defs:
        if kind == "product" and len(parts) == 1:
            continue
        space = spaces[of_dim[whole]]
        if space.definition is None:
            space.definition = (kind, tuple(of_dim[p] for p in parts))
    result = Spaces(spaces, of_dim)
    _break_cycles(result)
    _push_reasons_down(result)
    return result


def _break_cycles(spaces: Spaces) -> None:
    """A space defined in terms of itself (never seen in practice) is made unsafe."""
    for space in spaces:
        if space.definition is None:
            continue
        seen, stack = set(), list(space.definition[1])
        while stack:
            current = stack.pop()
            if current == space.id:
                space.reasons.add((UNSAFE, "defined in terms of itself"))
                space.definition = None
                break
            if current in seen:
                continue
            seen.add(current)
            definition = spaces[current].definition
            stack.extend(definition[1] if definition else ())


def _push_reasons_down(spaces: Spaces) -> None:
    """What must not change in a derived space must not change in any of its parts."""
    for space in spaces:
        if space.definition is None:
            continue
        reasons = set(space.reasons)
        if COMPUTED_SIZE in space.tags:
            reasons.add((UNSAFE, "a size made of these channels is computed in the graph"))
        for base in spaces.bases(space.id):
            spaces[base].reasons |= reasons
