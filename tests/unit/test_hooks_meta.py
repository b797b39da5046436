"""Meta-tests: every hook is documented in docs/plugins.md and exercised by a test."""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import json
from pathlib import Path

import pytest

from fxopt.cli import main
from fxopt.engine import hookspecs
from fxopt.engine.plugin_host import load_plugins
from fxopt.passes.finetune import hookspecs as finetune_hookspecs
from fxopt.passes.prune import hookspecs as prune_hookspecs
from fxopt.passes.quantize import hookspecs as quantize_hookspecs
from tests.cli import run_cli
from tests.conftest import write_recipe
from tests.entry_points import with_entry_points
from tests.fixtures.plugins import kitchen

ROOT = Path(__file__).resolve().parents[2]
#: the engine's hooks and those the packages owning an extension point add
SPEC_MODULES = (hookspecs, prune_hookspecs, quantize_hookspecs, finetune_hookspecs)
SPECS = {
    name: function
    for module in SPEC_MODULES
    for name, function in inspect.getmembers(module, inspect.isfunction)
    if name.startswith("fxopt_")
}
HOOKS = sorted(SPECS)


def test_there_are_hooks():
    assert "fxopt_register_passes" in HOOKS and len(HOOKS) >= 5


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    assert f"`{hook}(" in (ROOT / "docs" / "plugins.md").read_text(), f"document {hook}"
    assert SPECS[hook].__doc__, f"{hook} needs a docstring"


def hook_tests() -> dict[str, list[str]]:
    """``test_hook_<hook>[_...]`` functions of every test module, by hook (datasette's rule:
    a test named for the hook, not a mention anywhere, which a comment would satisfy)."""
    found: dict[str, list[str]] = {hook: [] for hook in HOOKS}
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook_"):
                for hook in HOOKS:
                    if f"{node.name}_".startswith(f"test_hook_{hook}_"):
                        found[hook].append(f"{path.name}::{node.name}")
    return found


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_tested(hook):
    assert hook_tests()[hook], f"no test_hook_{hook}[_...] function in tests/"


KITCHEN_RECIPE = {
    "data": {"verification": {"source": "thirdparty.ramp", "samples": 6, "batch_size": 3}},
    "passes": [{"name": "cleanup.dce"}],
    "target": {"backend": "thirdparty.eager", "options": {"onnx": False}},
    "verify": {"min_cosine": 0.99999, "latency": False},
}


@pytest.fixture(scope="module")
def kitchen_run(tmp_path_factory):
    """One run of the kitchen plugin (every kind of registration) through the CLI: its
    report, what its instrument saw, and what the console showed."""
    tmp = tmp_path_factory.mktemp("kitchen")
    model = tmp / "net.mlp.json"
    model.write_text(json.dumps({"sizes": [6, 12, 3], "seed": 1}))
    recipe = write_recipe(tmp, KITCHEN_RECIPE)
    kitchen.SEEN.clear()
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        with_entry_points(patch, kitchen="tests.fixtures.plugins.kitchen")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(recipe), str(model), "-o", str(tmp / "out"), "--json"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue()), list(kitchen.SEEN)


def test_hook_fxopt_register_loaders(kitchen_run):
    report, _ = kitchen_run
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 6]}]
    assert report["model"]["params_after"] == 6 * 12 + 12 + 12 * 3 + 3


def test_hook_fxopt_register_datasets(kitchen_run):
    report, _ = kitchen_run
    assert report["verify"]["metrics"]["samples"] == 6  # from the plugin's dataset


def test_hook_fxopt_register_tasks(kitchen_run):
    report, _ = kitchen_run
    assert report["task"] == "thirdparty.scores"  # the plugin's task judged the artifact
    assert report["verify"]["metrics"]["top1_agreement"] == 1.0
    assert report["verify"]["metrics"]["score_spread"] < 1e-5


def test_hook_fxopt_add_instruments(kitchen_run):
    _, seen = kitchen_run
    assert seen == ["cleanup.dce"]  # the plugin's instrument saw the pass


def test_hook_fxopt_register_backends(kitchen_run, monkeypatch, capsys, tmp_path):
    report, _ = kitchen_run
    assert report["artifacts"]["backend"] == "thirdparty.eager"
    # what the backend had to say about its lowering reaches the report, and the console
    assert report["artifacts"]["warnings"] == ["ran eagerly: nothing was compiled"]
    with_entry_points(monkeypatch, kitchen="tests.fixtures.plugins.kitchen")
    model = tmp_path / "net.mlp.json"
    model.write_text(json.dumps({"sizes": [6, 12, 3], "seed": 1}))
    recipe = write_recipe(tmp_path, KITCHEN_RECIPE)
    shown = run_cli(capsys, recipe, model, "-o", tmp_path / "again", "--no-cache")
    assert shown.code == 0, shown.err
    assert "thirdparty.eager: ran eagerly: nothing was compiled" in shown.out + shown.err


def test_hook_fxopt_register_observers_with_its_origin(monkeypatch):
    with_entry_points(monkeypatch, kitchen="tests.fixtures.plugins.kitchen")
    host = load_plugins()
    assert "[kitchen]" in host.observers.entry("thirdparty.minmax").origin
    assert "minmax" in host.observers  # the built-ins register through the same hook
