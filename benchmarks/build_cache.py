"""Build-cache figures: the no-op rerun's whole-process wall time, and what a change to the
last pass's config re-runs.

    python benchmarks/build_cache.py                       # quickstart + an int8 recipe

Each figure is the median of several whole `optimize` processes (python start-up and imports
included), timed with the same cache directory, so it is what a build system sees.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fxopt.run.toml_compat import tomllib

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZE = [sys.executable, "-m", "fxopt.cli.app"]


def run(recipe: Path, out: Path, env: dict[str, str], *extra: str) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(
        [*OPTIMIZE, str(recipe), "-o", str(out), "--json", *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"optimize failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


LAST_PASS = '\n[[passes]]\nname = "cleanup.constant_fold"\nconfig = {{ max_bytes = {} }}\n'


def with_last_pass(recipe: Path, work: Path, max_bytes: int) -> Path:
    """The recipe plus a final ``cleanup.constant_fold`` whose config we can change."""
    data = tomllib.loads(recipe.read_text())
    model_path = data.get("model", {}).get("path", "")
    if model_path and not model_path.startswith("pkg:") and not Path(model_path).is_absolute():
        raise SystemExit(f"{recipe}: use a recipe whose [model] path is pkg: or absolute")
    path = work / f"{recipe.stem}-{max_bytes}.toml"
    path.write_text(recipe.read_text() + LAST_PASS.format(max_bytes))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "recipes", nargs="*", type=Path, default=[ROOT / "recipes" / "quickstart.toml"]
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for recipe in args.recipes:
        work = Path(tempfile.mkdtemp(prefix="fxopt-bench-"))
        env = {**os.environ, "FXOPT_CACHE_DIR": str(work / "cache")}
        first = with_last_pass(recipe, work, 64 * 2**20)
        cold, report = run(first, work / "out", env)
        reruns = [run(first, work / "out", env) for _ in range(args.repeats)]
        assert all(r[1].get("cache") == "up-to-date" for r in reruns)
        times = [r[0] for r in reruns]
        print(f"\n## {recipe.name}")
        print(f"cold build: {cold:.1f} s (passes {[p['name'] for p in report['passes']]})")
        print(
            f"no-op rerun, whole process: median {statistics.median(times):.3f} s "
            f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)})"
        )
        seconds, changed = run(with_last_pass(recipe, work, 32 * 2**20), work / "out2", env)
        print(f"last pass's config changed: {seconds:.1f} s whole process")
        for p in changed["passes"]:
            state = "cache hit" if p["metrics"].get("cached") else "ran"
            print(f"  {p['name']:28s} {state:10s} {p['seconds']:7.2f} s")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
