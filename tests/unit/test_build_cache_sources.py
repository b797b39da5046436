"""The build cache key follows the code of fxopt and its plugins: of editable installs (in
development), whose version does not change when their code does, and of installed ones, whose
version need not change between two builds of a wheel."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from fxopt.run.plan import fingerprint
from fxopt.run.recipe import load_recipe
from fxopt.store.hashes import HashCache, installed_sources
from tests.conftest import TINY_RECIPE, write_recipe


def fake_install(site: Path, name: str, project: Path, *, editable: bool | None) -> None:
    """The metadata pip writes for ``name``: ``direct_url.json`` says editable or not
    (``None``: installed from an index, no direct URL); an entry point in fxopt's group."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fxopt.plugins]\n{name} = {name}\n")
    if editable is not None:
        direct = {"url": project.as_uri(), "dir_info": {"editable": editable}}
        (info / "direct_url.json").write_text(json.dumps(direct))


def plugin_project(root: Path) -> Path:
    """A plugin project with its package, a virtual environment and a build directory."""
    (root / "devplug").mkdir(parents=True)
    (root / "devplug" / "__init__.py").write_text("FACTOR = 1\n")
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / "venv" / "site.py").write_text("")
    (root / "build" / "lib").mkdir(parents=True)
    (root / "build" / "lib" / "copy.py").write_text("FACTOR = 1\n")
    return root


def test_editing_an_editable_plugin_changes_its_digest(tmp_path, monkeypatch):
    project = plugin_project(tmp_path / "devplug")
    fake_install(tmp_path / "site", "devplug", project, editable=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    hashes = HashCache(None)
    first = installed_sources(["devplug"], hashes)
    assert set(first) == {"devplug"}

    # what is not the project's source leaves the key alone
    (project / "build" / "lib" / "copy.py").write_text("FACTOR = 22\n")
    (project / "venv" / "site.py").write_text("changed = True\n")
    (project / "NOTES.txt").write_text("not code")
    assert installed_sources(["devplug"], hashes) == first

    (project / "devplug" / "__init__.py").write_text("FACTOR = 22\n")
    assert installed_sources(["devplug"], hashes) != first
    (project / "devplug" / "extra.py").write_text("")
    assert len({*first.values(), *installed_sources(["devplug"], hashes).values()}) == 2


def test_installs_without_a_record_of_their_files_are_not_hashed(tmp_path, monkeypatch):
    project = plugin_project(tmp_path / "devplug")
    fake_install(tmp_path / "site", "fromindex", project, editable=None)
    fake_install(tmp_path / "site", "fromdir", project, editable=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert installed_sources(["fromindex", "fromdir", "notinstalled"], HashCache(None)) == {}


def wheel_install(site: Path, name: str, code: str) -> Path:
    """A distribution installed from a wheel: its module in site-packages, listed in RECORD."""
    fake_install(site, name, site, editable=None)
    (site / f"{name}.py").write_text(code)
    (site / f"{name}-0.1.dist-info" / "RECORD").write_text(
        f"{name}.py,,\n{name}-0.1.dist-info/METADATA,,\n{name}-0.1.dist-info/RECORD,,\n"
    )
    return site / f"{name}.py"


def test_another_build_of_an_installed_version_changes_its_digest(tmp_path, monkeypatch):
    """Two wheels of one version (a rebuild, a local fix) must not share cached outputs."""
    module = wheel_install(tmp_path / "site", "wheelplug", "FACTOR = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    hashes = HashCache(None)
    first = installed_sources(["wheelplug"], hashes)
    assert set(first) == {"wheelplug"}
    assert installed_sources(["wheelplug"], hashes) == first
    module.write_text("FACTOR = 22\n")
    assert installed_sources(["wheelplug"], hashes) != first


def test_the_build_fingerprint_covers_editable_plugins(tmp_path, monkeypatch):
    project = plugin_project(tmp_path / "devplug")
    fake_install(tmp_path / "site", "devplug", project, editable=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    recipe = load_recipe(write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime")))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = fingerprint(recipe, model, HashCache(None))
    assert "devplug" in before["sources"]
    (project / "devplug" / "__init__.py").write_text("FACTOR = 22\n")
    assert fingerprint(recipe, model, HashCache(None))["sources"] != before["sources"]
