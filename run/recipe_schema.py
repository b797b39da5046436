"""The recipe's JSON schema, with each registered pass's config spelled out.

``[[passes]]`` items become a ``oneOf`` over the registered passes (``name`` as a constant,
``config`` as that pass's own schema), so an editor completes and checks pass configs too.
``recipes/schema.json`` is this, generated with the built-in plugins.
"""

from __future__ import annotations

from typing import Any

from fxopt.engine.plugin_host import PluginHost

from .recipe import Recipe


def recipe_schema(host: PluginHost) -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    defs = schema.setdefault("$defs", {})
    variants = []
    for entry in host.passes:
        config_schema = entry.obj.Config.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(config_schema.pop("$defs", {}))
        variants.append(
            {
                "type": "object",
                "title": entry.name,
                "properties": {
                    "name": {"const": entry.name},
                    "config": config_schema,
                },
                "required": ["name"],
                "additionalProperties": False,
            }
        )
    schema["properties"]["passes"]["items"] = {"oneOf": variants}
    defs.pop("PassSpec", None)
    return schema
