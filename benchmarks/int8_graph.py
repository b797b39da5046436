"""Graph-level variants of an ONNX Runtime int8 artifact, timed against each other and the peer.

Reads an int8 output directory of the ONNX Runtime backend (``optimize
recipes/minilm-int8-cpu.toml -o DIR``: ``model.onnx`` is the exported Q/DQ graph after
``rewrite_for_ort``, ``model.ort.onnx`` ONNX Runtime's optimized graph) and builds each
variant from its ``model.onnx`` the way the backend lowers (ONNX Runtime's offline
optimization at level ``all``, the backend's disabled fusions, ``finish_optimized``; the
backend's own private helpers do it, so that the variants differ from ``ours`` only in the
change measured):

- ``ours``: the directory's ``model.ort.onnx`` as built;
- ``QKV merged``: ``merge_linears.merge_parallel_linears`` (one int8 GEMM for Q, K and V, a
  ``Split`` after it; not part of the lowering, see that module);
- ``SkipLayerNorm fused``: the backend's ``skip_layernorm_fusion = true`` (the one fusion
  ONNX Runtime's transformers optimizer adds to this graph; which fusions it finds is
  printed too);
- ``ORT quantize_dynamic``: the peer, ``onnxruntime.quantization.quantize_dynamic`` (s8
  weights) of the fp32 export in ``--fp32`` (``optimize recipes/quickstart.toml -o DIR``),
  written there as ``dynq.onnx`` once.

Each variant's outputs are checked against ``ours`` (the same quantized numbers, up to float
rounding, except where a fusion changes the arithmetic), then all are timed in one process,
interleaved (``peers.interleaved``), at sequence 128, batch 1 and 8, on sessions whose idle
threads sleep instead of spinning, ``--repeats`` times; besides wall medians, the process's
CPU time per call (the work done, without the waits for a core of a shared machine). Last,
ONNX Runtime's profiler gives each variant's time per op type (calls round-robin).

    python benchmarks/int8_graph.py /tmp/cm-int8 --fp32 /tmp/cm-fp32 [--threads 2]
        [--repeats 2] [--profile-batches 1 8] [--no-fusion-report]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from peers import interleaved

from fxopt.plugins.onnx.export import save_onnx
from fxopt.plugins.onnxruntime.backend import OPTIMIZED, OnnxRuntimeBackend, OrtOptions, OrtRunner
from fxopt.plugins.onnxruntime.merge_linears import merge_parallel_linears
from fxopt.plugins.onnxruntime.qdq import finish_optimized

OURS, PEER = "ours", "ORT quantize_dynamic"
SEQUENCE = 128


def quiet_options(backend: OnnxRuntimeBackend, profile: str | None = None):
    """The backend's session options, idle intra-op threads sleeping (not spinning on the
    cores the next runner times on); with ``profile``, ONNX Runtime's profiler on."""
    options = backend._session_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return options


class Variant:
    """An optimized ONNX file and the fusions its sessions leave out."""

    def __init__(self, path: Path, disabled: list[str], info: dict | None = None) -> None:
        self.path, self.disabled, self.info = path, disabled, info or {}

    def runner(self, backend: OnnxRuntimeBackend, profile: str | None = None) -> OrtRunner:
        options = quiet_options(backend, profile)
        return OrtRunner(self.path, options, backend.options.providers, self.disabled)


def lowered(
    source: Path,
    work: Path,
    name: str,
    rewrite: Callable[[onnx.GraphProto], int] | None,
    options: OrtOptions,
) -> Variant | None:
    """``source``'s ``model.onnx``, rewritten by ``rewrite`` (None: as it is), optimized as the
    backend with ``options`` optimizes it; None when ``rewrite`` changes nothing."""
    model = onnx.load(str(source / "model.onnx"))
    changed = rewrite(model.graph) if rewrite is not None else None
    if changed == 0:
        return None
    directory = work / name.replace(" ", "_")
    directory.mkdir()
    save_onnx(model, directory / "model.onnx")
    backend = OnnxRuntimeBackend(options)
    disabled = backend._disabled(quantized=True)
    backend._optimize(directory, options.graph_optimization_level, OPTIMIZED, disabled)
    info = finish_optimized(directory / OPTIMIZED)
    if changed is not None:
        info["rewritten"] = changed
    return Variant(directory / OPTIMIZED, disabled, info)


def dynamic_peer(fp32_dir: Path) -> Variant:
    """ONNX Runtime ``quantize_dynamic`` (s8 weights) of the fp32 export, made once."""
    target = fp32_dir / "dynq.onnx"
    if not target.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(fp32_dir / "model.onnx"),
            str(target),
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
        )
    return Variant(target, [])


def transformers_report(source: Path, hidden: int, heads: int) -> dict[str, dict[str, int]]:
    """What ONNX Runtime's transformers optimizer fuses in our Q/DQ graph: per ``opt_level``
    (0: its own Python fusions only; 2: ONNX Runtime's extended level after them), the fused
    operators it counts (zeros left out). Its Python fusions need symbolic shape inference,
    which fails on the exported attention mask's ``Expand``."""
    from onnxruntime.transformers.optimizer import optimize_model

    found = {}
    for level in (0, 2):
        model = optimize_model(
            str(source / "model.onnx"),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            opt_level=level,
            only_onnxruntime=False,
        )
        stats = model.get_fused_operator_statistics()
        found[f"opt_level {level}"] = {op: n for op, n in stats.items() if n}
    return found


def feeds_for(names: list[str], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids of a full-length, unpadded batch (the GEMMs' work does not depend on them)."""
    rng = np.random.default_rng(seed)
    values = {
        "input_ids": rng.integers(1000, 20000, (batch, SEQUENCE)),
        "attention_mask": np.ones((batch, SEQUENCE)),
        "token_type_ids": np.zeros((batch, SEQUENCE)),
    }
    return {name: values[name].astype(np.int64) for name in names}


def profiles(
    variants: dict[str, Variant], backend: OnnxRuntimeBackend, feeds, calls: int
) -> dict[str, dict]:
    """ONNX Runtime's profile of each variant over ``calls`` calls (after 3 untimed), the
    variants' calls round-robin so that load from elsewhere hits all alike: per op type,
    milliseconds per call and nodes; ``total`` the mean call."""
    directory = Path(tempfile.mkdtemp(prefix="int8-graph-profile-"))
    runners = {
        name: v.runner(backend, profile=str(directory / f"{index}"))
        for index, (name, v) in enumerate(variants.items())
    }
    for _ in range(3 + calls):
        for runner in runners.values():
            runner.run(feeds)
    return {name: _profiled(runner, calls) for name, runner in runners.items()}


def _profiled(runner: OrtRunner, calls: int) -> dict:
    path = Path(runner.session.end_profiling())
    events = json.loads(path.read_text(encoding="utf-8"))
    path.unlink()
    runs = [e for e in events if e.get("name") == "model_run"][-calls:]
    start = runs[0]["ts"]  # the untimed calls' nodes left out
    ms: dict[str, float] = collections.defaultdict(float)
    nodes: collections.Counter[str] = collections.Counter()
    for event in events:
        kernel = event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
        if kernel and event["ts"] >= start:
            ms[event["args"]["op_name"]] += event["dur"] / 1e3 / calls
            nodes[event["args"]["op_name"]] += 1
    per_op = {op: (ms[op], nodes[op] // calls) for op in ms}
    return {"total": float(np.mean([e["dur"] for e in runs])) / 1e3, "ops": per_op}


class CpuClock:
    """A runner that also records the CPU milliseconds (all threads of the process) of each
    call: on a machine shared with other jobs, the work a variant does, without the waits
    for a core that inflate wall times (ONNX Runtime's idle threads do not spin here)."""

    def __init__(self, runner: OrtRunner) -> None:
        self.runner, self.cpu_ms = runner, []

    def run(self, feeds):
        start = time.process_time()
        out = self.runner.run(feeds)
        self.cpu_ms.append((time.process_time() - start) * 1e3)
        return out


def timed_table(runners: dict[str, OrtRunner], names: list[str], args) -> None:
    """Wall and CPU medians at batch 1 and 8, interleaved, and their ratios, printed."""
    wall, cpu, load = {}, {}, {}
    for batch in (1, 8):
        clocks = {name: CpuClock(runner) for name, runner in runners.items()}
        load[batch] = uptime()
        timing = interleaved(clocks, feeds_for(names, batch), args.rounds, args.iters)
        load[batch] += " -> " + uptime()
        wall[batch] = {name: t["ms"] for name, t in timing.items()}
        cpu[batch] = {name: float(np.median(c.cpu_ms)) for name, c in clocks.items()}
    print(
        f"\nsequence {SEQUENCE}, {args.threads} threads, wall medians of "
        f"{args.rounds}x{args.iters} interleaved calls (CPU ms: median over all calls)"
    )
    print(f"b1: {load[1]}; b8: {load[8]}")
    print(f"| variant | ms b1 | ms b8 | vs {OURS} b1 / b8 | vs {PEER} b1 / b8 | CPU ms b1 / b8 |")
    print("|---|---|---|---|---|---|")
    for name in runners:
        b1, b8 = wall[1][name], wall[8][name]
        ours = f"{wall[1][OURS] / b1:.3f}x / {wall[8][OURS] / b8:.3f}x"
        peer = f"{wall[1][PEER] / b1:.3f}x / {wall[8][PEER] / b8:.3f}x"
        work = f"{cpu[1][name]:.1f} / {cpu[8][name]:.1f}"
        print(f"| {name} | {b1:.2f} | {b8:.2f} | {ours} | {peer} | {work} |")


def profile_table(variants, backend, names, batch: int, calls: int) -> None:
    before = uptime()
    found = profiles(variants, backend, feeds_for(names, batch), calls)
    print(f"\nper op type, b{batch}, ms per call ({before} -> {uptime()}); nodes in brackets")
    ops = sorted(
        {op for p in found.values() for op in p["ops"]},
        key=lambda op: -max(p["ops"].get(op, (0, 0))[0] for p in found.values()),
    )
    print("| op type | " + " | ".join(found) + " |")
    print("|---|" + "---|" * len(found))
    for op in ops:
        cells = [
            f"{p['ops'][op][0]:.2f} ({p['ops'][op][1]})" if op in p["ops"] else "–"
            for p in found.values()
        ]
        print(f"| {op} | " + " | ".join(cells) + " |")
    totals = [f"{p['total']:.2f}" for p in found.values()]
    print("| **run (wall)** | " + " | ".join(totals) + " |")


def uptime() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("int8_dir", type=Path)
    parser.add_argument("--fp32", type=Path, required=True, help="fp32 output dir (the peer)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed tables, one after another")
    parser.add_argument("--profile-calls", type=int, default=10)
    parser.add_argument("--profile-batches", type=int, nargs="*", default=[8])
    parser.add_argument("--no-fusion-report", dest="fusion_report", action="store_false")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--only", nargs="*", help="time only these variants (and ours, peer)")
    args = parser.parse_args()
    options = OrtOptions(intra_op_threads=args.threads, inter_op_threads=1)
    backend = OnnxRuntimeBackend(options)
    work = Path(tempfile.mkdtemp(prefix="int8-graph-"))

    variants: dict[str, Variant] = {
        OURS: Variant(args.int8_dir / OPTIMIZED, backend._disabled(quantized=True))
    }
    built = {
        "QKV merged": lambda: lowered(
            args.int8_dir, work, "QKV merged", merge_parallel_linears, options
        ),
        "SkipLayerNorm fused": lambda: lowered(
            args.int8_dir,
            work,
            "SkipLayerNorm fused",
            None,
            options.model_copy(update={"skip_layernorm_fusion": True}),
        ),
    }
    for name, build in built.items():
        if args.only is not None and name not in args.only:
            continue
        variant = build()
        if variant is None:
            print(f"{name}: nothing to rewrite (the artifact has it already)")
            continue
        variants[name] = variant
        print(f"{name}: {variant.info}")
    variants[PEER] = dynamic_peer(args.fp32)

    runners = {name: v.runner(backend) for name, v in variants.items()}
    names = runners[OURS].input_names
    check = feeds_for(names, 8, seed=1)
    reference = runners[OURS].run(check)[0]
    for name, runner in runners.items():
        got = runner.run(check)[0]
        diff = float(np.abs(got - reference).max())
        cosine = float((got * reference).sum() / np.linalg.norm(got) / np.linalg.norm(reference))
        print(f"{name}: max |diff| vs {OURS} {diff:.3g}, cosine {cosine:.6f}")

    for _ in range(args.repeats):
        timed_table(runners, names, args)

    if args.fusion_report:
        print("\nONNX Runtime's transformers optimizer on our Q/DQ graph (fused operators):")
        for level, found in transformers_report(args.int8_dir, args.hidden, args.heads).items():
            print(f"  {level}: {found}")
    for batch in args.profile_batches:
        profile_table(variants, backend, names, batch, args.profile_calls)


if __name__ == "__main__":
    main()
