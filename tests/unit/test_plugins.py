"""Plugin discovery through the ``fxopt.plugins`` entry-point group."""

from __future__ import annotations

import json

import pytest

from fxopt.engine import hookimpl, hookspecs
from fxopt.engine.errors import PluginError
from fxopt.engine.hookspecs import hookspec
from fxopt.engine.plugin_host import load_plugins
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_PASSES, tiny_recipe_dict, write_recipe
from tests.entry_points import with_entry_points


def test_builtins_register_through_the_entry_point_group():
    host = load_plugins()
    assert {"cleanup.dce", "cleanup.dropout", "cleanup.constant_fold"} <= set(host.passes.names())
    assert {"onnxruntime", "torch"} <= set(host.backends.names())
    assert {"huggingface", "pt2"} <= set(host.loaders.names())
    assert host.passes.entry("cleanup.dce").origin.startswith("fxopt ")
    assert host.failures == []


def test_hook_fxopt_register_passes_a_third_party_pass_runs(
    monkeypatch, capsys, tmp_path, tiny_bert_dir
):
    with_entry_points(monkeypatch, scale="tests.fixtures.plugins.good")
    host = load_plugins()
    assert "thirdparty.scale" in host.passes
    assert "[scale]" in host.passes.entry("thirdparty.scale").origin

    scale = {"name": "thirdparty.scale", "config": {"factor": 2.0}}
    recipe = tiny_recipe_dict(passes=[*TINY_PASSES, scale], verify={"max_abs": 10.0})
    result = run_cli(
        capsys, write_recipe(tmp_path, recipe), tiny_bert_dir, "-o", tmp_path / "out", "--json"
    )
    assert result.code == 0, result.err
    import json

    report = json.loads(result.out)
    scale = report["passes"][-1]
    assert scale["name"] == "thirdparty.scale"
    assert scale["metrics"] == {"factor": 2.0}
    # doubling every output keeps the direction (cosine 1) but not the values
    assert scale["numerics"]["cosine_mean"] == pytest.approx(1.0, abs=1e-5)
    assert scale["numerics"]["rel_l2"] == pytest.approx(1.0, abs=1e-4)


def test_duplicate_pass_name_is_refused_naming_both(monkeypatch):
    with_entry_points(monkeypatch, clash="tests.fixtures.plugins.clash")
    with pytest.raises(PluginError) as info:
        load_plugins()
    message = str(info.value)
    assert "pass 'cleanup.dce' is registered twice" in message
    assert "[builtin-passes]" in message
    assert "[clash]" in message


def test_broken_plugin_is_isolated(monkeypatch, capsys):
    with_entry_points(monkeypatch, broken="tests.fixtures.plugins.broken")
    host = load_plugins()
    assert [f.name for f in host.failures] == ["broken"]
    assert "a_dependency_nobody_installed" in host.failures[0].error
    assert "cleanup.dce" in host.passes  # everything else still loads

    result = run_cli(capsys, "passes")
    assert result.code == 0
    assert "plugin broken" in " ".join(result.err.split())


def test_broken_plugin_named_when_the_recipe_needs_it(monkeypatch, capsys, tmp_path, tiny_bert_dir):
    with_entry_points(monkeypatch, broken="tests.fixtures.plugins.broken")
    recipe = tiny_recipe_dict(passes=[*TINY_PASSES, {"name": "broken.pass"}])
    result = run_cli(capsys, write_recipe(tmp_path, recipe), tiny_bert_dir)
    assert_clean_failure(
        result, 2, "unknown pass 'broken.pass'", "plugins that failed to import: broken"
    )


def test_unregister_drops_what_a_plugin_registered(monkeypatch):
    with_entry_points(monkeypatch, scale="tests.fixtures.plugins.good")
    host = load_plugins()
    host.unregister("scale")
    assert "thirdparty.scale" not in host.passes
    assert "cleanup.dce" in host.passes


def test_incompatible_hookspec_versions_are_isolated(monkeypatch):
    with_entry_points(
        monkeypatch,
        old="tests.fixtures.plugins.old_hooks",
        future="tests.fixtures.plugins.future_version",
    )
    host = load_plugins()
    failures = {f.name: f.error for f in host.failures}
    assert "fxopt_register_pass" in failures["old"] and "another version" in failures["old"]
    assert "hookspec version 99, this fxopt has version 1" in failures["future"]
    assert "future.pass" not in host.passes and "old.pass" not in host.passes
    assert "cleanup.dce" in host.passes


def test_autoload_can_be_disabled(monkeypatch):
    with_entry_points(monkeypatch, scale="tests.fixtures.plugins.good")
    monkeypatch.setenv("FXOPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = load_plugins()
    assert "thirdparty.scale" not in host.passes
    assert "cleanup.dce" in host.passes  # built-ins always load
    assert "thirdparty.scale" in load_plugins(only=["scale"]).passes


def test_unknown_plugin_name_is_an_error(monkeypatch, capsys):
    result = run_cli(capsys, "passes", "--plugin", "nosuch")
    assert_clean_failure(result, 2, "--plugin", "no installed plugin is named nosuch")


def test_tracing(monkeypatch, capsys):
    monkeypatch.setenv("FXOPT_TRACE_PLUGINS", "1")
    load_plugins()
    err = capsys.readouterr().err
    assert "fxopt plugins: fxopt_register_passes [builtin-passes]" in err


class _WidgetSpecs:
    @hookspec
    def thirdparty_register_widgets(registry):
        """Register widgets."""


class _WidgetUser:
    @hookimpl
    def thirdparty_register_widgets(registry):
        registry.register("gear", 42)


class _WidgetOwner:
    @hookimpl
    def fxopt_add_hookspecs(host):
        host.add_hookspecs(_WidgetSpecs)
        host.add_registry("widgets", "widget", "thirdparty_register_widgets")


def test_hook_fxopt_add_hookspecs_declares_a_registry_without_editing_the_engine():
    host = load_plugins(entry_points=False)
    host.register(_WidgetUser, name="user")  # before the owner: filled when it arrives
    host.register(_WidgetOwner, name="owner")
    host.pm.check_pending()
    assert host.widgets.get("gear") == 42
    assert host.widgets.entry("gear").origin == "user"
    with pytest.raises(AttributeError, match="no registry 'gadgets'"):
        host.gadgets  # noqa: B018


def test_package_registries_come_from_their_packages():
    host = load_plugins()
    assert {"attacks", "layer_pruners", "observers"} <= set(host.registries())
    assert "pgd" in host.attacks and "minmax" in host.observers
    assert "fxopt_register_attacks" not in vars(hookspecs)  # declared by finetune itself


def test_hook_fxopt_check_is_answered_by_the_backends_plugin(capsys, monkeypatch, tmp_path):
    with_entry_points(monkeypatch, kitchen="tests.fixtures.plugins.kitchen")
    recipe = write_recipe(tmp_path, tiny_recipe_dict())
    result = run_cli(capsys, "check", recipe, "--backend", "thirdparty.eager")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {
        "backend": "thirdparty.eager",
        "recipe": str(recipe),
        "ok": True,
    }
    result = run_cli(capsys, "check", recipe, "--backend", "onnxruntime")
    assert_clean_failure(
        result, 2, "--backend", "no installed plugin has a pre-flight check for backend"
    )
