"""The build-system examples: a second build does nothing, changing the recipe rebuilds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "build"


def optimize_command() -> str:
    found = Path(sys.executable).with_name("optimize")
    return str(found) if found.exists() else "optimize"


@pytest.fixture
def workspace(tmp_path):
    shutil.copytree(EXAMPLES, tmp_path / "build")
    return tmp_path / "build"


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def change_recipe(recipe: Path) -> None:
    recipe.write_text(recipe.read_text().replace("samples = 8", "samples = 4"))


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make(workspace, tiny_bert_dir):
    directory = workspace / "make"
    make = ["make", f"MODEL={tiny_bert_dir}", f"OPTIMIZE={optimize_command()}"]
    run(make, directory)
    manifest = directory / "optimized" / "manifest.json"
    assert json.loads(manifest.read_text())["build_key"]
    assert str(tiny_bert_dir / "model.safetensors") in (directory / "optimized.d").read_text()

    assert "Nothing to be done" in run(make, directory)

    change_recipe(workspace / "recipe.toml")
    key = json.loads(manifest.read_text())["build_key"]
    output = run(make, directory)
    assert "optimize" in output
    assert json.loads(manifest.read_text())["build_key"] != key
    report = json.loads((directory / "optimized" / "report.json").read_text())
    assert report["verify"]["metrics"]["samples"] == 4


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake(workspace, tiny_bert_dir):
    source, build = workspace / "cmake", workspace / "cmake-build"
    run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build),
            f"-DMODEL={tiny_bert_dir}",
            f"-DOPTIMIZE={optimize_command()}",
        ],
        workspace,
    )
    first = run(["cmake", "--build", str(build)], workspace)
    assert "fxopt: optimizing" in first
    manifest = build / "optimized" / "manifest.json"
    key = json.loads(manifest.read_text())["build_key"]

    second = run(["cmake", "--build", str(build)], workspace)
    assert "fxopt: optimizing" not in second

    change_recipe(workspace / "recipe.toml")
    third = run(["cmake", "--build", str(build)], workspace)
    assert "fxopt: optimizing" in third
    assert json.loads(manifest.read_text())["build_key"] != key


@pytest.mark.skipif(shutil.which("bazel") is None, reason="bazel is not installed")
def test_bazel(workspace, tiny_bert_dir):
    directory = workspace / "bazel"
    shutil.copy(workspace / "recipe.toml", directory / "recipe.toml")
    shutil.copytree(tiny_bert_dir, directory / "model")
    run(["bazel", "build", "//:optimized", "--action_env=PATH"], directory)
    second = run(["bazel", "build", "//:optimized", "--action_env=PATH"], directory)
    assert "1 process" not in second
