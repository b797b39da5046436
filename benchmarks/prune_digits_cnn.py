"""Structured pruning of a residual CNN trained on scikit-learn's 8x8 digits.

Trains the CNN (conv+BN stem, two residual blocks, a strided conv, global pooling, a linear
classifier), saves it as ``benchmarks/digits-cnn/model.pt2`` with its data
(``digits.npz``: calibration, fine-tune and held-out test slices, in that order), then runs
``recipes/digits-cnn-prune.toml`` through the engine: ``prune.structured`` removes 50% of the
channels of every conv group (Taylor importance on the calibration slice), and the
``finetune`` pass distils the unpruned model back in (the table says when that pass is not
registered). Unpruned and pruned graphs are lowered with the ONNX Runtime backend (fp32) and
timed in this process, alternating runs; top-1 accuracy is measured on the held-out slice.

    python benchmarks/prune_digits_cnn.py [--iters 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from peers import interleaved
from torch import nn

from fxopt.engine.capture import capture
from fxopt.engine.console import Output
from fxopt.engine.pipeline import prepare
from fxopt.engine.plugin_host import load_plugins
from fxopt.engine.recipe import load_recipe
from fxopt.testing.models import ResidualBlock

HERE = Path(__file__).resolve().parent
OUT = HERE / "digits-cnn"
RECIPE = HERE.parent / "recipes" / "digits-cnn-prune.toml"
CALIBRATION, FINETUNE = 64, 1100  # the rest of the 1797 digits is the held-out test slice


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block1 = ResidualBlock(width)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.block2 = ResidualBlock(2 * width)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_model_and_data(epochs: int = 20) -> None:
    """Train the CNN on the calibration + fine-tune slices; write model.pt2 and digits.npz."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x = (digits.images[order] / 16.0).astype(np.float32)[:, None]
    labels = digits.target[order].astype(np.int64)
    OUT.mkdir(exist_ok=True)
    np.savez(OUT / "digits.npz", x=x, labels=labels)

    torch.manual_seed(0)
    model = DigitsCNN()
    train_x = torch.from_numpy(x[: CALIBRATION + FINETUNE])
    train_y = torch.from_numpy(labels[: CALIBRATION + FINETUNE])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * 19)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_x)).split(64):
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=512)
    program = torch.export.export(model, (train_x[:8],), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(OUT / "model.pt2"))


def accuracy(runner, batches) -> float:
    right = total = 0
    for batch in batches:
        (logits,) = runner.run({"x": batch["x"].numpy()})
        right += int((logits.argmax(-1) == batch["labels"].numpy()).sum())
        total += len(batch["labels"])
    return right / total


def lower(ir, directory: Path, threads: int):
    from fxopt.plugins.ort_backend import OnnxRuntimeBackend, OrtOptions

    backend = OnnxRuntimeBackend(OrtOptions(intra_op_threads=threads, inter_op_threads=1))
    directory.mkdir(parents=True, exist_ok=True)
    return backend.load(directory, backend.lower(ir, directory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    make_model_and_data()
    train_seconds = time.perf_counter() - started
    host = load_plugins()
    recipe = load_recipe(RECIPE)
    recovery = "finetune" in host.passes
    prune_only = recipe.model_copy(deep=True)
    prune_only._source = recipe.source
    prune_only.passes = [p for p in recipe.passes if p.name != "finetune"]
    before = prepare(prune_only, host=host, output=Output(quiet=True))
    if recovery:
        after = prepare(recipe, host=host, output=Output())
    else:
        print("recovery: the finetune pass is not registered")
        after = before
    record = next(r for r in before.records if r.name == "prune.structured")
    baseline = capture(before.loaded, before.loaded.inputs, before.loaded.dims, source="cnn")
    test = before.splits["verification"]

    with tempfile.TemporaryDirectory() as tmp:
        unpruned = lower(baseline, Path(tmp) / "unpruned", args.threads)
        pruned = lower(before.ir, Path(tmp) / "pruned", args.threads)
        recovered = lower(after.ir, Path(tmp) / "recovered", args.threads)
        accuracies = [accuracy(r, test) for r in (unpruned, pruned, recovered)]
        timings = {}
        for batch in (8, 64):
            feeds = {"x": torch.cat([b["x"] for b in test])[:batch].numpy()}
            ms = interleaved({"unpruned": unpruned, "pruned": recovered}, feeds, args.iters, 1)
            timings[batch] = [ms["unpruned"]["ms"], ms["pruned"]["ms"]]

    samples = sum(len(b["labels"]) for b in test)
    print()
    print(
        f"digits CNN (sklearn 8x8 digits, {samples} held-out images), ONNX Runtime "
        f"{onnxruntime.__version__} fp32, {args.threads} threads, torch {torch.__version__}; "
        f"median of {args.iters} runs"
    )
    print(f"pruned: {record.metrics['pruned']}, criterion {record.metrics['criterion']}")
    print()
    print("| | parameters | top-1 | latency b8 (ms) | latency b64 (ms) | speed-up b8 / b64 |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("unpruned", baseline.parameter_count(), accuracies[0], 0),
        ("pruned, no recovery", record.metrics["params_after"], accuracies[1], 1),
    ]
    if recovery:
        rows.append(("pruned + distillation", after.ir.parameter_count(), accuracies[2], 1))
    for name, params, top1, which in rows:
        b8, b64 = timings[8][which], timings[64][which]
        speed = f"{timings[8][0] / b8:.2f}x / {timings[64][0] / b64:.2f}x"
        print(f"| {name} | {params:,} | {top1:.4f} | {b8:.3f} | {b64:.3f} | {speed} |")
    if recovery:
        tuned = next(r for r in after.records if r.name == "finetune")
        print(f"\nrecovery: {tuned.metrics.get('steps')} steps, {tuned.seconds:.1f} s wall")
    print(f"training the CNN: {train_seconds:.0f} s")


if __name__ == "__main__":
    main()
