"""Adversarial fine-tuning of a small CNN on scikit-learn's digits: robust vs clean accuracy.

Runs ``recipes/digits-adversarial.toml`` (PGD-7 training, epsilon 0.1 on pixels in [0, 1])
and, in the same process on the same model and data, two peers: FGSM ("fast") adversarial
training with PGD-based early stopping, and plain fine-tuning for the same number of steps.
Accuracy is measured by the ``finetune`` pass itself on the 512 held-out verification images:
clean top-1, and top-1 under PGD-10 at the recipe's epsilon, before and after. Each variant
runs with several seeds; the table shows medians.

    python benchmarks/finetune_adversarial_digits.py [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch
from digits_example import digits_module

from fxopt.engine import RunOptions, optimize
from fxopt.run.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "digits-adversarial.toml"


def build_model() -> None:
    """The recipe's model and data (``examples/digits/digits_model.py``), if not built yet."""
    target = RECIPE.parent / "digits"
    if (target / "model.pt2").exists() and (target / "digits.npz").exists():
        return
    digits_module().build(target)


def variant(name: str, seed: int) -> dict:
    data = load_recipe(RECIPE).model_dump(mode="json", exclude_none=True)
    data = copy.deepcopy(data)
    config = data["passes"][0]["config"]
    config["seed"] = seed
    if name == "fgsm + early stop":
        config["adversarial"] = {**config["adversarial"], "method": "fgsm", "steps": 1}
    elif name == "plain fine-tune":
        config["adversarial"] = {**config["adversarial"], "method": "none"}
        config["eval_robust"] = True
        config.pop("early_stopping", None)
    recipe = parse_recipe(data, source=RECIPE)
    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(out_dir=Path(tmp) / "out", use_cache=False)
        report = optimize(recipe, options=options)
    return report["passes"][0]["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    build_model()
    names = ("pgd-7 (recipe)", "fgsm + early stop", "plain fine-tune")
    rows = []
    for name in names:
        runs = [variant(name, seed) for seed in range(args.seeds)]

        def median(key: str, runs=runs) -> float:
            values = [r[key] for r in runs if key in r]
            return statistics.median(values) if values else float("nan")

        stopped = [r.get("early_stopping", {}).get("stopped_at") for r in runs]
        rows.append(
            (
                name,
                median("clean_accuracy_before"),
                median("clean_accuracy_after"),
                median("robust_accuracy_before"),
                median("robust_accuracy_after"),
                median("train_seconds"),
                median("steps"),
                stopped,
            )
        )
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.seeds} seeds, medians")
    print(
        "| variant | clean before | clean after | Δ clean (pts) | PGD-10 before | PGD-10 after "
        "| Δ robust (pts) | steps | train s | early-stopped at |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, cb, ca, rb, ra, seconds, steps, stopped in rows:
        print(
            f"| {name} | {cb:.4f} | {ca:.4f} | {100 * (ca - cb):+.1f} | {rb:.4f} | {ra:.4f} "
            f"| {100 * (ra - rb):+.1f} | {steps:.0f} | {seconds:.1f} | {stopped} |"
        )


if __name__ == "__main__":
    main()
