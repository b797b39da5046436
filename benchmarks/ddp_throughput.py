"""Fine-tuning step throughput: 2 gloo DDP processes (``torchrun``) vs 1 process, on CPU.

The model is the digits CNN widened (64/128 channels, 256 hidden: ~0.6 M parameters, ~25
MFLOP per image) so a step does real work; batch 128, 30 steps, no attack. Every variant is
the same ``optimize`` run of one recipe, launched as a subprocess (DDP needs its own
processes, so no in-process peer is possible); the figure is the ``finetune`` pass's own
``steps_per_second`` (global batches per second, excluding start-up), median of ``--repeats``
interleaved runs:

- 1 process, 1 thread;  1 process, 2 threads (all cores);  2 processes x 1 thread (torchrun).

    python benchmarks/ddp_throughput.py [--repeats 3] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from digits_example import digits_module

RECIPE = """
schema_version = 1
[model]
path = "{model}"
task = "image-classification"
[model.inputs.x]
dtype = "float32"
shape = ["batch", 1, 8, 8]
[model.dims.batch]
min = 1
opt = 128
max = 512
[data.finetune]
source = "npz"
path = "{data}"
samples = 1280
batch_size = 128
[data.verification]
source = "npz"
path = "{data}"
samples = 128
batch_size = 128
[[passes]]
name = "finetune"
[passes.config]
max_steps = {steps}
lr = 1e-3
evaluate = false
[target]
backend = "torch"
[target.options]
onnx = false
[verify]
min_cosine = -1.0
latency = false
pass_samples = 0
"""


def prepare(directory: Path, steps: int) -> Path:
    import torch

    digits = digits_module()
    x, labels = digits.digits_arrays()
    np.savez(directory / "digits.npz", x=x, labels=labels)
    torch.manual_seed(0)
    model = digits.SmallCNN(width=64, hidden=256)
    digits.export_pt2(model, directory / "model.pt2")
    recipe = directory / "recipe.toml"
    recipe.write_text(
        RECIPE.format(model=directory / "model.pt2", data=directory / "digits.npz", steps=steps)
    )
    return recipe


def run(recipe: Path, out: Path, processes: int, threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = str(threads)
    flags = ["-o", str(out), "--json", "-q", "--no-cache", "--cache-dir", str(out) + "-cache"]
    if processes == 1:
        command = [sys.executable, "-m", "fxopt.cli.app", str(recipe), *flags]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(processes), "-m", "fxopt.cli.app", str(recipe), *flags,
        ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    report = json.loads((out / "report.json").read_text())
    (metrics,) = [p["metrics"] for p in report["passes"] if p["name"] == "finetune"]
    return metrics["steps_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    variants = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2)}
    variants["2 processes x 1 thread (DDP, gloo)"] = (2, 1)
    results: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = prepare(Path(tmp), args.steps)
        for repeat in range(args.repeats):
            for name, (processes, threads) in variants.items():
                out = Path(tmp) / f"out-{repeat}-{processes}-{threads}"
                results[name].append(run(recipe, out, processes, threads))
    base = statistics.median(results["1 process x 1 thread"])
    all_cores = statistics.median(results["1 process x 2 threads"])
    print(f"cores: {os.cpu_count()}, steps {args.steps}, batch 128, {args.repeats} repeats")
    print("| variant | steps/s (median) | runs | vs 1x1 | vs 1x2 |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"| {name} | {median:.2f} | {runs} | {median / base:.2f}x | {median / all_cores:.2f}x |"
        )


if __name__ == "__main__":
    main()
