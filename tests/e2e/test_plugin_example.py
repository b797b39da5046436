"""The example plugin package, installed into a fresh venv, used by a recipe end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.passes.finetune_support import digits_module

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "examples" / "fxopt-plugin-example"

RECIPE = """
schema_version = 1

[model]
task = "image-classification"

[model.inputs.x]
dtype = "float32"
shape = ["batch", 1, 8, 8]
low = 0.0
high = 1.0

[model.dims.batch]
min = 1
opt = 32
max = 256

[data.calibration]
source = "npz"
path = "digits.npz"
samples = 64
batch_size = 32

[data.finetune]
source = "npz"
path = "digits.npz"
samples = 256
batch_size = 32

[data.verification]
source = "npz"
path = "digits.npz"
samples = 256
batch_size = 64

[[passes]]
name = "example.magnitude_threshold"
config = { fraction = 0.02 }

[[passes]]
name = "finetune"
[passes.config]
epochs = 1
lr = 1e-3
evaluate = false
adversarial = { method = "example.uniform_noise", epsilon = 0.05, target = "pixels" }

[[passes]]
name = "quantize.int8"
config = { observer = "example.absmax_margin", ops = ["linear", "conv2d"], cache = false }

[target]
backend = "onnxruntime"

[verify]
min_cosine = 0.9
min_top1_agreement = 0.85
latency = false
"""


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
    (tmp_path / "recipe.toml").write_text(textwrap.dedent(RECIPE))
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
