"""Structured pruning of all-MiniLM-L6-v2: speed, size and fidelity, before and after recovery.

Runs ``recipes/minilm-prune.toml`` through the engine (``prepare``: load, capture,
passes): ``prune.structured`` removes 30% of the FFN neurons and 25% of the heads of every
layer, then the ``finetune`` pass distils the unpruned model back in (when that pass is
registered; the table says so when it is not) on the ``text-mix`` source: standard-library
docstring sentences, the Python reference and torch's and NumPy's docstrings in turn, none of
the paragraphs the ``stdlib-docstrings`` source yields, which calibration and verification use.
Both the unpruned and the pruned graph are lowered with the ONNX Runtime backend (fp32, graph
optimization ``all``) and timed in this process, alternating runs, batch 8 x sequence 128;
fidelity is the cosine of the sentence embeddings against the original model on the recipe's
256 held-out standard-library docstrings (its primary verification set; ``optimize`` reports
the off-domain set too).

    python benchmarks/prune_minilm.py [--iters 30] [--threads 2] [--no-recovery]
    python benchmarks/prune_minilm.py --corpus-only     # write the corpus out, to read it
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch
from peers import interleaved

from fxopt.engine import hookimpl
from fxopt.engine.console import Output
from fxopt.engine.instruments import Instrument
from fxopt.engine.plugin_host import load_plugins
from fxopt.passes.dce import DeadCodeElimination
from fxopt.passes.dropout import RemoveDropout
from fxopt.plugins.data.text_domains import text_mix_corpus
from fxopt.plugins.onnxruntime.backend import OnnxRuntimeBackend, OrtOptions
from fxopt.run import prepare
from fxopt.run.capture import capture
from fxopt.run.recipe import load_recipe
from fxopt.run.verify import compare

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "minilm-prune.toml"
CORPUS = HERE / "minilm-prune" / "text-mix.txt"


class CpuClock(Instrument):
    """CPU seconds (all threads of this process) spent in each pass."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self._last = 0.0

    def on_start(self, ir) -> None:
        self._last = time.process_time()

    def after_pass(self, index, pass_, result, record) -> None:
        now = time.process_time()
        self.cpu[pass_.name] = self.cpu.get(pass_.name, 0.0) + now - self._last
        self._last = now


class ClockPlugin:
    def __init__(self, clock: CpuClock) -> None:
        self.clock = clock

    @hookimpl
    def fxopt_add_instruments(self, recipe):
        return [self.clock]


def lower(ir, directory: Path, threads: int):
    backend = OnnxRuntimeBackend(OrtOptions(intra_op_threads=threads, inter_op_threads=1))
    directory.mkdir(parents=True, exist_ok=True)
    artifact = backend.lower(ir, directory)
    return backend.load(directory, artifact)


def fidelity(runner, prepared) -> dict[str, float]:
    batches = prepared.splits["verification"]
    reference, got, masks = [], [], []
    with torch.no_grad():
        for batch in batches:
            args = [batch[s.name] for s in prepared.loaded.inputs]
            reference.append([t.numpy() for t in prepared.loaded.module(*args)])
            got.append(runner.run({k: v.numpy() for k, v in batch.items()}))
            masks.append(batch["attention_mask"].numpy())
    task = load_plugins().tasks.get(prepared.ir.meta.task)()
    return compare(reference, got, masks, task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-recovery", action="store_true", help="skip the finetune pass")
    parser.add_argument(
        "--corpus-only",
        action="store_true",
        help=f"write the fine-tune corpus (the text-mix source) to {CORPUS} and stop",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = text_mix_corpus()
    print(f"fine-tune corpus: {len(corpus)} sentences (source text-mix)")
    if args.corpus_only:
        CORPUS.parent.mkdir(exist_ok=True)
        CORPUS.write_text("\n".join(corpus) + "\n", encoding="utf-8")
        print(f"written to {CORPUS}")
        return

    host = load_plugins()
    clock = CpuClock()
    host.register(ClockPlugin(clock), name="bench-cpu-clock")
    recipe = load_recipe(RECIPE)
    recovery = "finetune" in host.passes and not args.no_recovery
    if not recovery:
        recipe.passes = [p for p in recipe.passes if p.name != "finetune"]
        why = (
            "skipped (--no-recovery)" if args.no_recovery else "the finetune pass is not registered"
        )
        print(f"recovery: {why}")
    started = time.perf_counter()
    prepared = prepare(recipe, host=host, output=Output())
    wall = time.perf_counter() - started
    records = {r.name: r for r in prepared.records}
    for record in prepared.records:  # the passes' own figures, before the timing runs
        numerics = {k: round(v, 4) for k, v in record.numerics.items()}
        print(f"{record.name}: {record.seconds:.0f} s, {record.metrics}, {numerics}", flush=True)
    pruned_record = records["prune.structured"]

    baseline = capture(
        prepared.loaded, prepared.loaded.inputs, prepared.loaded.dims, source=str(RECIPE)
    )
    for cleanup in (RemoveDropout(), DeadCodeElimination()):
        baseline = cleanup.run(baseline, None).ir

    feeds = {k: v.numpy() for k, v in prepared.splits["verification"][0].items()}
    with tempfile.TemporaryDirectory() as tmp:
        unpruned = lower(baseline, Path(tmp) / "unpruned", args.threads)
        pruned = lower(prepared.ir, Path(tmp) / "pruned", args.threads)
        ms = interleaved({"unpruned": unpruned, "pruned": pruned}, feeds, args.iters, 1)
        base_ms, pruned_ms = ms["unpruned"]["ms"], ms["pruned"]["ms"]
        final = fidelity(pruned, prepared)

    before = pruned_record.numerics
    print()
    print(
        f"all-MiniLM-L6-v2, batch 8 x seq 128, ONNX Runtime {onnxruntime.__version__} fp32, "
        f"{args.threads} threads, torch {torch.__version__}; median of {args.iters} runs"
    )
    print(
        f"pruned: {pruned_record.metrics['pruned']}, criterion {pruned_record.metrics['criterion']}"
    )
    print()
    print("| | parameters | ORT latency (ms) | speed-up | cosine mean / min vs original |")
    print("|---|---|---|---|---|")
    print(
        f"| unpruned | {baseline.parameter_count():,} | {base_ms:.1f} | 1.00x | 1.0000 / 1.0000 |"
    )
    print(
        f"| pruned, no recovery | {pruned_record.metrics['params_after']:,} | {pruned_ms:.1f} | "
        f"{base_ms / pruned_ms:.2f}x | {before['cosine_mean']:.4f} / {before['cosine_min']:.4f} |"
    )
    if recovery:
        tuned = records["finetune"]
        print(
            f"| pruned + distillation | {prepared.ir.parameter_count():,} | {pruned_ms:.1f} | "
            f"{base_ms / pruned_ms:.2f}x | {final['cosine_mean']:.4f} / "
            f"{final['cosine_min']:.4f} |"
        )
        print()
        print(
            f"recovery: {tuned.metrics.get('steps', '?')} steps, {tuned.seconds:.0f} s wall, "
            f"{clock.cpu['finetune'] / 60:.1f} CPU-minutes (whole pass, evaluation included)"
        )
    else:
        print(f"(ONNX Runtime cosine of the pruned artifact: {final['cosine_mean']:.4f})")
    print(f"prune.structured: {pruned_record.seconds:.1f} s wall; whole run {wall:.0f} s")


if __name__ == "__main__":
    main()
