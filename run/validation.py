"""How a pydantic validation error reads: one line per problem, ``file: a.b[2].c: what (got x)``,
an unknown key followed by the keys allowed there, and the first error's fix as ``fix:``.

The recipe and every pass's and backend's config are reported this way, so an error in
``passes[1].config.ratio`` reads like one in ``data.verification.samples``.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from fxopt.engine.errors import RecipeError


def validation_error(
    exc: ValidationError, model: type[BaseModel], *, file: str, prefix: str = ""
) -> RecipeError:
    """Turn pydantic's errors into one message: ``file: a.b[2].c: what (got x)`` per line."""
    lines, fix = [], None
    for err in exc.errors():
        fix = fix or (err.get("ctx") or {}).get("fix")
        loc = prefix + _dotted(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, err["loc"][:-1])
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{loc}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {_lower_first(msg)} (got {err['input']!r})")
    first, *rest = lines
    field, _, message = first.partition(": ")
    if rest:
        message += "".join(f"\n  {file}: {line}" for line in rest)
    return RecipeError(message, file=file, field=field, fix=fix)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` inside ``model``, to list them next to an unknown key."""
    current: Any = model
    for part in loc:
        current = _inside(current, part)
    models = [m for m in _members(current) if _is_model(m)]
    return list(models[0].model_fields) if models else []


def _inside(tp: Any, part: Any) -> Any:
    """The type at key ``part`` of ``tp``: a model's field, a dict's value, a list's item; in a
    union, that of the first member that has it (``DataSplit | dict[str, DataSplit]``)."""
    for member in _members(tp):
        if _is_model(member):
            if (info := member.model_fields.get(str(part))) is not None:
                return info.annotation
        elif args := typing.get_args(member):
            return args[-1]
    return None


def _members(tp: Any) -> list[Any]:
    """A union's members but ``None``; any other type alone."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
