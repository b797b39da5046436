"""The engine is the core: it imports nothing from the built-in passes or plugins, which
reach it only through the hooks a third party uses too, nor from the run that drives it or
the report the run writes (a plugin that imports the engine must not pull in the driver). It
stays the size of its job. The store (what fxopt keeps on disk) sits below the run: it needs
the engine's errors and console and the report, nothing more, and never torch, which the
no-op rerun must not import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engine"
#: what the store may import of fxopt
STORE_MAY_USE = (
    "fxopt.store",
    "fxopt.engine.errors",
    "fxopt.engine.console",
    "fxopt.engine.interrupts",
    "fxopt.report",
)
#: the engine's size budget, in lines of Python (docstrings included)
ENGINE_MAX_LINES = 2_500


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_engine_imports_no_pass_and_no_plugin():
    offenders = {
        path.name: sorted(
            m for m in imported_modules(path) if m.startswith(("fxopt.passes", "fxopt.plugins"))
        )
        for path in sorted(ENGINE.rglob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_importing_every_engine_module_loads_no_run_report_pass_or_plugin():
    """Type-only imports of the recipe are allowed (``TYPE_CHECKING``); anything that runs at
    import time is not, which the source alone cannot tell, so the modules are imported."""
    modules = [
        "fxopt.engine" + "".join(f".{part}" for part in p.relative_to(ENGINE).with_suffix("").parts)
        for p in sorted(ENGINE.rglob("*.py"))
        if p.name != "__init__.py"
    ]
    script = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = ('fxopt.run', 'fxopt.report', 'fxopt.passes', 'fxopt.plugins', 'fxopt.search')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_engine_stays_within_its_line_budget():
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in ENGINE.rglob("*.py"))
    assert lines <= ENGINE_MAX_LINES, f"engine/ is {lines} lines (budget {ENGINE_MAX_LINES})"


def test_store_uses_only_the_engine_errors_console_interrupts_and_the_report_never_torch():
    offenders = {
        path.name: sorted(
            m
            for m in imported_modules(path)
            if (m.startswith("fxopt") and not m.startswith(STORE_MAY_USE))
            or m.split(".")[0] in ("torch", "numpy", "onnx", "onnxruntime")
        )
        for path in sorted((ROOT / "store").glob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_no_test_module_imports_another_test_module():
    """Shared helpers live in support modules (tests/cli.py, */..._support.py, conftest),
    so running one test file never depends on collecting another."""
    tests = ROOT / "tests"
    offenders = {
        path.relative_to(tests).as_posix(): sorted(
            m for m in imported_modules(path) if m.split(".")[-1].startswith("test_")
        )
        for path in sorted(tests.rglob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}
