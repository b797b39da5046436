"""A TOML writer: pass configs (``to_toml``) and whole recipes (``recipe_toml``).

The standard library reads TOML but does not write it. Tests that write recipe text by hand
drift from one another and hide what each one varies; plugin authors write recipes in their
own test suites too. Both can build a recipe as a dict instead (a base, and the few keys the
test changes) and let :func:`recipe_toml` write it.
"""

from __future__ import annotations

import json
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def to_toml(table: dict[str, Any]) -> str:
    """The TOML text of a config table, as a recipe's ``[passes.config]`` would hold it."""
    lines, nested = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {toml_value(value)}")
    for key, value in nested:
        lines.append(f"{_key(key)} = {_inline(value)}")
    return "\n".join(lines) + "\n"


def recipe_toml(recipe: dict[str, Any]) -> str:
    """The TOML text of a whole recipe given as a nested dict.

    Top-level scalars come first, then each table under its dotted header
    (``[model.dims.batch]``, ``[data.verification]``, ``[target.options]``) and each list of
    tables as an array of tables (``[[passes]]``, its ``config`` as ``[passes.config]`` and
    deeper tables as ``[passes.config.adversarial]``). A header is written only where a table
    has keys of its own or nothing at all (``[model]`` is implied by ``[model.dims.batch]``).
    An empty list stays a value (``passes = []``). Values are strings, booleans, integers,
    floats, lists and dicts; anything else (``None`` included: TOML has no null) raises
    ``TypeError``. ``tomllib.loads(recipe_toml(r)) == r`` for every such dict.

        from fxopt.testing import recipe_toml

        path.write_text(recipe_toml({
            "schema_version": 1,
            "passes": [{"name": "acme.prune", "config": {"ratio": 0.5}}],
            "target": {"backend": "onnxruntime"},
        }))
    """
    blocks: list[str] = []
    _write_table(recipe, (), blocks, array_item=False)
    return "\n\n".join(blocks) + "\n"


def _write_table(
    table: dict[str, Any], path: tuple[str, ...], blocks: list[str], *, array_item: bool
) -> None:
    """Append the blocks of ``table`` at ``path``: its header and own keys, then its tables."""
    lines, children = [], []
    for key, value in table.items():
        if not isinstance(key, str):
            raise TypeError(f"TOML keys are strings, not {type(key).__name__} ({key!r})")
        if isinstance(value, dict) or _is_table_array(value):
            children.append((key, value))
        else:
            lines.append(f"{_key(key)} = {toml_value(value)}")
    if array_item:
        blocks.append("\n".join([f"[[{_dotted(path)}]]", *lines]))
    elif path and (lines or not children):
        blocks.append("\n".join([f"[{_dotted(path)}]", *lines]))
    elif lines:
        blocks.append("\n".join(lines))
    for key, value in children:
        if isinstance(value, dict):
            _write_table(value, (*path, key), blocks, array_item=False)
        else:
            for item in value:
                _write_table(item, (*path, key), blocks, array_item=True)


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(item, dict) for item in value)
    )


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(part) for part in path)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are TOML's, but not its \ud83d\ude00 surrogate pairs: keep non-ASCII
    # as UTF-8 and escape only the control characters (JSON leaves DEL as it is)
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """A value as TOML writes it (tables inline): ``{backend = "torch", options = {...}}``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return _inline(value)
    raise TypeError(f"{type(value).__name__} has no TOML form")


def _inline(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in table.items()) + "}"
