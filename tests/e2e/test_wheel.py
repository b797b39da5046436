"""The built wheel, installed into a fresh virtual environment, works outside the repo."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_and_runs_from_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = dist.glob("fxopt-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    # dependencies (torch, onnx, ...) come from this environment, fxopt only from the wheel
    site = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    optimize = str(venv / "bin" / "optimize")
    help_text = subprocess.run(
        [optimize, "--help"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert "usage: optimize" in help_text and "exit codes" in help_text

    listing = subprocess.run(
        [optimize, "passes", "--json"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    passes = {p["name"]: p["origin"] for p in json.loads(listing)["passes"]}
    assert "cleanup.dce" in passes and passes["cleanup.dce"].startswith("fxopt")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import fxopt.engine; print(fxopt.engine.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(site), where

    # the build key follows the installed code, not only the version: a patched install of
    # the same version does not reuse what the unpatched one built
    digest = [
        str(venv / "bin" / "python"),
        "-c",
        "import json; from fxopt.store.hashes import HashCache, installed_sources; "
        "print(json.dumps(installed_sources(['fxopt'], HashCache(None))))",
    ]
    before = json.loads(
        subprocess.run(digest, cwd=tmp_path, check=True, capture_output=True).stdout
    )
    assert set(before) == {"fxopt"}
    patched = Path(site, "fxopt", "engine", "interrupts.py")
    patched.write_text(patched.read_text() + "\n# a local fix\n")
    after = json.loads(subprocess.run(digest, cwd=tmp_path, check=True, capture_output=True).stdout)
    assert after != before
