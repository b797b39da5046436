"""The digits example (``examples/digits/digits_model.py``), loaded by path for the benchmarks.

The example is a script users run, not an installed package, so every benchmark that trains
or exports its CNN loads it through here rather than importing it.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "digits" / "digits_model.py"


@cache
def digits_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
