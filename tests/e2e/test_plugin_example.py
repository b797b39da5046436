"""The example plugin package, installed into a fresh venv, used by a recipe end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import merged, write_recipe
from tests.passes.finetune_support import DIGITS_RECIPE, digits_module

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "examples" / "fxopt-plugin-example"

#: the digits fine-tune recipe with the example's three extensions: a pass first, its attack
#: in the fine-tune, its observer in the int8 calibration
PASSES = [
    {"name": "example.magnitude_threshold", "config": {"fraction": 0.02}},
    {
        "name": "finetune",
        "config": {
            "epochs": 1,
            "lr": 1e-3,
            "evaluate": False,
            "adversarial": {"method": "example.uniform_noise", "epsilon": 0.05, "target": "pixels"},
        },
    },
    {
        "name": "quantize.int8",
        "config": {
            "observer": "example.absmax_margin",
            "ops": ["linear", "conv2d"],
            "cache": False,
        },
    },
]
RECIPE = merged(
    DIGITS_RECIPE,
    {
        "model": {"dims": {"batch": {"max": 256}}},
        "data": {
            "calibration": {"source": "npz", "path": "digits.npz", "samples": 64, "batch_size": 32},
            "finetune": {"samples": 256, "batch_size": 32},
            "verification": {"batch_size": 64},
        },
        "passes": PASSES,
        "target": {"backend": "onnxruntime", "options": None},
        "verify": {"min_cosine": 0.9, "min_top1_agreement": 0.85, "pass_samples": None},
    },
)


@pytest.mark.slow
def test_example_plugin_installs_and_runs(tmp_path):
    venv = tmp_path / "venv"
    # no pip of its own: this environment's pip installs into it, building with its setuptools
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # built from a copy: pip's build/ and egg-info must not land in the source tree
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # fxopt and its dependencies come from this environment (its .pth files included)
    here = sysconfig.get_path("purelib")
    Path(site, "fxopt-env.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(source),
        ],
        check=True,
    )
    listing = json.loads(
        subprocess.run(
            [python, "-m", "fxopt.cli.app", "passes", "--json"],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    origins = {p["name"]: p["origin"] for p in listing["passes"]}
    assert origins["example.magnitude_threshold"].startswith("fxopt-plugin-example 0.1.0")
    assert "example.uniform_noise" in {a["name"] for a in listing["attacks"]}
    assert "example.absmax_margin" in {o["name"] for o in listing["observers"]}

    digits_module().build(tmp_path, train=1024, epochs=3)
    write_recipe(tmp_path, RECIPE)
    run = subprocess.run(
        [python, "-m", "fxopt.cli.app", "recipe.toml", "model.pt2", "-o", "out", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    passes = {p["name"]: p for p in report["passes"]}
    assert passes["example.magnitude_threshold"]["metrics"]["zeroed"] > 0
    assert passes["finetune"]["modified"]
    assert report["verify"]["metrics"]["top1_agreement"] >= 0.85
    assert "QuantizeLinear" in (tmp_path / "out" / "model.onnx").read_bytes().decode("latin-1")
