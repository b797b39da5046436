"""The run: planned once (:mod:`.plan`), then a straight list of stages, one module each.

    load → reference → capture → passes → lower → verify → write

The CLI is a thin layer over :func:`optimize`; build systems and notebooks call it directly::

    from fxopt.engine import optimize
    report = optimize("recipes/quickstart.toml", out_dir="out/minilm")
    assert report.passed

The recipe (:mod:`.recipe`), the plan and the options need no torch; the executor
(:mod:`.driver`) and the stages do, so its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_DRIVER = ("PREPARE", "STAGES", "Prepared", "Stage", "execute", "optimize", "prepare")

__all__ = list(_DRIVER)


def __getattr__(name: str) -> Any:
    if name in _DRIVER:
        return getattr(importlib.import_module(".driver", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
