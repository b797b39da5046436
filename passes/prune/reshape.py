"""How a reshape maps input axes onto output axes, from the two shapes alone.

Every view-like op (``view``, ``reshape``, ``flatten``, ``unflatten``, ``squeeze``,
``unsqueeze``) keeps the row-major order of elements, so its input and output axes fall into
runs whose sizes multiply to the same number: one axis to one (unchanged), one to several
(a split: ``384 -> 12 x 32``), several to one (a merge: ``batch x seq -> tokens``). Sizes may be
symbolic (``s0 * s1``); runs are closed by divisibility, so no concrete value is ever guessed.

    >>> from sympy import Symbol
    >>> b, s = Symbol("b"), Symbol("s")
    >>> runs((b, s, 384), (b, s, 12, 32))
    [((0,), (0,)), ((1,), (1,)), ((2,), (2, 3))]
    >>> runs((b, s, 64), (b * s, 64))
    [((0, 1), (0,)), ((2,), (1,))]
"""

from __future__ import annotations

import sympy

from .dims import Size

Run = tuple[tuple[int, ...], tuple[int, ...]]


def runs(before: tuple[Size, ...], after: tuple[Size, ...]) -> list[Run] | None:
    """Runs of input and output axes with equal products; size-1 axes belong to none.

    ``None`` when the shapes cannot be matched without knowing a symbolic size.
    """
    a = [i for i, n in enumerate(before) if n != 1]
    b = [j for j, n in enumerate(after) if n != 1]
    out: list[Run] = []
    i = j = 0
    while i < len(a) and j < len(b):
        ins, outs = [a[i]], [b[j]]
        left, right = sympy.sympify(before[a[i]]), sympy.sympify(after[b[j]])
        i, j = i + 1, j + 1
        while True:
            step = _which_grows(left, right)
            if step == 0:
                break
            if step is None:
                return None
            if step < 0:
                if i >= len(a):
                    return None
                ins.append(a[i])
                left *= before[a[i]]
                i += 1
            else:
                if j >= len(b):
                    return None
                outs.append(b[j])
                right *= after[b[j]]
                j += 1
        out.append((tuple(ins), tuple(outs)))
    if i != len(a) or j != len(b):
        return None
    return out


def _which_grows(left: sympy.Expr, right: sympy.Expr) -> int | None:
    """0 when equal; -1 when ``left`` divides ``right`` (take another input axis); 1 when
    ``right`` divides ``left``; ``None`` when neither can be shown."""
    ratio = sympy.simplify(right / left)
    if ratio == 1:
        return 0
    numerator, denominator = sympy.fraction(sympy.together(ratio))
    if denominator == 1 and _is_factor(numerator):
        return -1
    if numerator == 1 and _is_factor(denominator):
        return 1
    return None


def _is_factor(expr: sympy.Expr) -> bool:
    """A whole product of positive sizes (an integer > 1 or a product of symbols)."""
    if expr.is_Integer:
        return int(expr) > 1
    return all(
        f.is_Symbol or (f.is_Integer and int(f) > 0) or (f.is_Pow and f.exp.is_Integer)
        for f in sympy.Mul.make_args(expr)
    )
