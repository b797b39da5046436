"""Structured pruning of a residual CNN trained on scikit-learn's 8x8 digits.

Trains the CNN (``builtin:digits-resnet``: conv+BN stem, two residual blocks, a strided conv,
global pooling, a linear classifier, trained on the calibration and fine-tune slices of the
``digits`` source; kept in memory), then runs ``recipes/digits-cnn-prune.toml``, which names
that model and source, through the engine: ``prune.structured`` removes 50% of the
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

import onnxruntime
import torch
from peers import interleaved

from fxopt.engine.console import Output
from fxopt.engine.plugin_host import load_plugins
from fxopt.plugins.data.builtin_models import build_model
from fxopt.run import prepare
from fxopt.run.capture import capture
from fxopt.run.recipe import load_recipe

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "digits-cnn-prune.toml"


def accuracy(runner, batches) -> float:
    right = total = 0
    for batch in batches:
        (logits,) = runner.run({"x": batch["x"].numpy()})
        right += int((logits.argmax(-1) == batch["labels"].numpy()).sum())
        total += len(batch["labels"])
    return right / total


def lower(ir, directory: Path, threads: int):
    from fxopt.plugins.onnxruntime.backend import OnnxRuntimeBackend, OrtOptions

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
    build_model("digits-resnet")  # trained once here (one thread), kept for both runs below
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
