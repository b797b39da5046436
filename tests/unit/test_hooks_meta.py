"""Meta-tests: every hook is documented in docs/plugins.md and exercised by a test."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_tested(hook):
    users = [
        p
        for p in (ROOT / "tests").rglob("*.py")
        if p.name != "test_hooks_meta.py" and hook in p.read_text(encoding="utf-8")
    ]
    assert users, f"no test exercises {hook}"


def test_loader_dataset_backend_and_instrument_hooks(monkeypatch, capsys, tmp_path):
    with_entry_points(monkeypatch, kitchen="tests.fixtures.plugins.kitchen")
    kitchen.SEEN.clear()
    model = tmp_path / "net.mlp.json"
    model.write_text(json.dumps({"sizes": [6, 12, 3], "seed": 1}))
    recipe = write_recipe(
        tmp_path,
        """
        [data.verification]
        source = "thirdparty.ramp"
        samples = 6
        batch_size = 3
        [[passes]]
        name = "cleanup.dce"
        [target]
        backend = "thirdparty.eager"
        options = { onnx = false }
        [verify]
        min_cosine = 0.99999
        latency = false
        """,
    )
    result = run_cli(capsys, recipe, model, "-o", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 6]}]
    assert report["verify"]["metrics"]["samples"] == 6  # from the plugin's dataset
    assert report["task"] == "thirdparty.scores"  # the plugin's task judged the artifact
    assert report["verify"]["metrics"]["top1_agreement"] == 1.0
    assert report["verify"]["metrics"]["score_spread"] < 1e-5
    assert report["artifacts"]["backend"] == "thirdparty.eager"
    assert report["model"]["params_after"] == 6 * 12 + 12 + 12 * 3 + 3
    assert kitchen.SEEN == ["cleanup.dce"]  # the plugin's instrument saw the pass
    # what the backend had to say about its lowering reaches the report, and the console
    assert report["artifacts"]["warnings"] == ["ran eagerly: nothing was compiled"]
    shown = run_cli(capsys, recipe, model, "-o", tmp_path / "again", "--no-cache")
    assert shown.code == 0, shown.err
    assert "thirdparty.eager: ran eagerly: nothing was compiled" in shown.out + shown.err


def test_observer_hook_registers_with_its_origin(monkeypatch):
    with_entry_points(monkeypatch, kitchen="tests.fixtures.plugins.kitchen")
    host = load_plugins()
    assert "[kitchen]" in host.observers.entry("thirdparty.minmax").origin
    assert "minmax" in host.observers  # the built-ins register through the same hook
