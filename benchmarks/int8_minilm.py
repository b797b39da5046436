"""int8 all-MiniLM-L6-v2: ours (ONNX Runtime and torch.compile) against the usual tools.

Everything in one process: ``recipes/minilm-int8-cpu.toml``'s model, data and passes run
through the engine's pieces (capture, pass manager, backends), each step timed; then every
path embeds the recipe's 256 verification sentences (never used for calibration) and is
timed at sequence 128, batch 1 and batch 8, calls interleaved round-robin so load spikes hit
all paths alike; medians.

Paths: torch eager fp32 (the reference), torch ``quantize_dynamic`` (fbgemm, qint8 Linear),
ONNX Runtime fp32 (our lowering of the float graph), ONNX Runtime ``quantize_dynamic`` (s8
weights, of that same fp32 model), ours through ONNX Runtime, ours through the torch backend
(``compile = true``: inductor, freezing, oneDNN int8 kernels).

Fidelity: cosine of the sentence embeddings vs torch eager fp32 (mean, min) and how often the
nearest neighbour of each sentence among the 256 is the same one as with fp32.

    python benchmarks/int8_minilm.py [--threads 2] [--rounds 8] [--json out.json] [--recipe R]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from peers import interleaved, timed

from fxopt.engine.backend import Runner
from fxopt.engine.console import Output
from fxopt.engine.pass_base import PassContext
from fxopt.engine.pass_manager import PassManager
from fxopt.engine.plugin_host import load_plugins
from fxopt.plugins.onnxruntime.backend import OnnxRuntimeBackend, OrtOptions, OrtRunner
from fxopt.plugins.torch.backend import TorchBackend, TorchOptions, TorchRunner
from fxopt.run import load
from fxopt.run.bind import bind
from fxopt.run.capture import capture
from fxopt.run.options import RunOptions
from fxopt.run.plan import resolve_model
from fxopt.run.recipe import load_recipe
from fxopt.run.state import RunState

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "minilm-int8-cpu.toml"


def embed(runner: Runner, batches: list[dict]) -> np.ndarray:
    outs = [runner.run({n: b[n].numpy() for n in runner.input_names})[0] for b in batches]
    return np.concatenate(outs).astype(np.float64)


def fidelity(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    def unit(e: np.ndarray) -> np.ndarray:
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    cosine = (unit(reference) * unit(got)).sum(axis=1)

    def neighbours(e: np.ndarray) -> np.ndarray:
        sim = unit(e) @ unit(e).T
        np.fill_diagonal(sim, -2.0)
        return sim.argmax(axis=1)

    same = (neighbours(reference) == neighbours(got)).mean()
    return {"cosine_mean": cosine.mean(), "cosine_min": cosine.min(), "nn_agreement": same}


def dynamic_peers(loaded, names: list[str], fp32_dir: Path, threads: int) -> dict[str, Runner]:
    """torch and ONNX Runtime ``quantize_dynamic``, as a user would call them."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_dynq = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(loaded.module), {torch.nn.Linear}, dtype=torch.qint8
        )
    quantize_dynamic(
        str(fp32_dir / "model.onnx"),
        str(fp32_dir / "dynq.onnx"),
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
    )
    options = OnnxRuntimeBackend(OrtOptions(intra_op_threads=threads))._session_options()
    return {
        "torch quantize_dynamic": TorchRunner(torch_dynq, TorchOptions(), names=names),
        "ORT quantize_dynamic": OrtRunner(
            fp32_dir / "dynq.onnx", options, ["CPUExecutionProvider"]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--recipe", type=Path, default=RECIPE, help="another int8 recipe of the same model"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    output = Output()

    recipe = load_recipe(args.recipe)
    host = load_plugins()
    model_path = resolve_model(recipe, None)
    run = RunState(recipe, bind(recipe, host), host, model_path, RunOptions(), output)
    load.stage(run)  # the model and the data sets, as a run loads them
    plan, loaded, splits = run.plan, run.loaded, run.splits
    names = [s.name for s in loaded.inputs]
    seconds: dict[str, float] = {}

    def export():
        return capture(loaded, loaded.inputs, loaded.dims, source="minilm")

    ir, seconds["export"] = timed(export)
    float_ir = export()
    ctx = PassContext(
        recipe=recipe,
        batches=lambda split: splits.get(split, []),
        reference=lambda feeds: [],
        evaluate=lambda candidate: {},
        cache_dir=Path(tempfile.mkdtemp(prefix="int8-bench-cache-")),  # no cache hit
        output=output,
        plugins=host,
    )
    (ir, records), seconds["passes"] = timed(lambda: PassManager(plan.passes).run(ir, ctx))
    int8 = next(r for r in records if r.name == "quantize.int8")
    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))

    def lower(backend, graph, name: str) -> Runner:
        directory = work / name
        directory.mkdir()
        artifact = backend.lower(graph, directory)
        return backend.load(directory, artifact)

    ort = OnnxRuntimeBackend(OrtOptions(intra_op_threads=args.threads, inter_op_threads=1))
    compiled = TorchBackend(TorchOptions(compile=True, onnx=False))
    runners: dict[str, Runner] = {
        "torch eager fp32": TorchRunner(loaded.module, TorchOptions(), names)
    }
    runners["ORT fp32"], seconds["lower ORT fp32"] = timed(lambda: lower(ort, float_ir, "fp32"))
    runners.update(dynamic_peers(loaded, names, work / "fp32", args.threads))
    runners["ours, ORT int8"], seconds["lower ORT int8"] = timed(lambda: lower(ort, ir, "ort"))
    runners["ours, torch.compile int8"], seconds["lower torch int8 (+compile b8)"] = timed(
        lambda: lower(compiled, ir, "torch")
    )

    verification = splits["verification"]
    reference = embed(runners["torch eager fp32"], verification)
    quality = {name: fidelity(reference, embed(r, verification)) for name, r in runners.items()}

    feeds8 = {n: verification[0][n].numpy() for n in names}
    feeds1 = {n: v[:1] for n, v in feeds8.items()}
    speed = {
        "b1": interleaved(runners, feeds1, args.rounds, args.iters),
        "b8": interleaved(runners, feeds8, args.rounds, args.iters),
    }
    load_end = os.getloadavg()
    report(args, seconds, int8, quality, speed, load_start, load_end, len(reference))


def report(args, seconds, int8, quality, speed, load_start, load_end, sentences) -> None:
    import onnxruntime
    import torchao
    import transformers

    eager = {b: speed[b]["torch eager fp32"]["ms"] for b in speed}
    dynq = {
        b: min(speed[b][p]["ms"] for p in ("torch quantize_dynamic", "ORT quantize_dynamic"))
        for b in speed
    }
    print(
        f"\nall-MiniLM-L6-v2, sequence 128, {args.threads} threads, medians of "
        f"{args.rounds}x{args.iters} interleaved calls; {sentences} held-out sentences"
    )
    print("| path | b1 ms | b1 vs eager | b8 ms | b8 vs eager | cosine mean | cosine min | NN |")
    print("|---|---|---|---|---|---|---|---|")
    for name, q in quality.items():
        b1, b8 = speed["b1"][name]["ms"], speed["b8"][name]["ms"]
        print(
            f"| {name} | {b1:.1f} | {eager['b1'] / b1:.2f}x | {b8:.1f} | {eager['b8'] / b8:.2f}x "
            f"| {q['cosine_mean']:.5f} | {q['cosine_min']:.5f} | {q['nn_agreement']:.3f} |"
        )
    for name in ("ours, ORT int8", "ours, torch.compile int8"):
        ratios = ", ".join(
            f"{b}: {dynq[b] / speed[b][name]['ms']:.2f}x the faster quantize_dynamic" for b in speed
        )
        print(f"{name}: {ratios}")
    build = seconds["export"] + seconds["passes"]
    print(
        f"export {seconds['export']:.1f} s, passes (calibration {int8.metrics['calibration']})"
        f" {seconds['passes']:.1f} s"
    )
    for key in ("lower ORT int8", "lower torch int8 (+compile b8)"):
        print(f"export + calibration + {key}: {build + seconds[key]:.1f} s")
    first_b1 = speed["b1"]["ours, torch.compile int8"]["first_s"]
    print(f"torch.compile of the b1 shape (first b1 call): {first_b1:.1f} s")
    print(f"load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    print(
        f"versions: torch {torch.__version__}, torchao {torchao.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, transformers {transformers.__version__}"
    )
    if args.json:
        data = {
            "seconds": seconds,
            "quality": quality,
            "speed": speed,
            "load": [load_start, load_end],
            "int8_metrics": int8.metrics,
        }
        args.json.write_text(json.dumps(data, indent=1, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
