"""A TOML writer for pass configs (scalars, lists and nested tables), for round-trip checks."""

from __future__ import annotations

import json
from typing import Any


def to_toml(table: dict[str, Any]) -> str:
    """The TOML text of a config table, as a recipe's ``[passes.config]`` would hold it."""
    lines, nested = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {_value(value)}")
    for key, value in nested:
        lines.append(f"{json.dumps(key)} = {_inline(value)}")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return _inline(value)
    raise TypeError(f"{type(value).__name__} has no TOML form")


def _inline(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in table.items()) + "}"
