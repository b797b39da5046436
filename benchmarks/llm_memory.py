"""Peak memory of ``optimize`` on a decoder language model of a real shape, against its weights.

    python benchmarks/llm_memory.py                           # writes the model in --work
    python benchmarks/llm_memory.py --model /tmp/mem1b/model  # reuses a written model

The budget: a run's peak resident memory stays under 3x the model's float32 weight bytes
(Llama-3.2-1B's shape: 1.24 B parameters, 4.6 GiB). Each recipe of ``llm_decode.py`` (fp32,
no passes; int4, ``quantize.weight_only``) is built by a fresh ``optimize`` process with an
empty cache directory of its own, so a run does all a first build does (the pass cache
included) and reuses nothing. Per run:

- **peak RSS**: the kernel's high-water mark of that process (``wait4``'s ``ru_maxrss``), the
  figure the budget is about;
- **where it goes**: the process marks each stage of the run and the costly steps inside them
  (``torch.export``, the ONNX export and save, each ONNX Runtime session, ...) with its RSS
  and high-water mark at each mark, and this script samples its RSS every 0.2 s in between.
  A step's row: RSS at its start and end, the highest sample within and its file-backed
  ("mapped") part; the peak is placed in the innermost step where the high-water mark rose
  to its final value.

Results: benchmarks/RESULTS.md, "Peak memory, Llama-3.2-1B shape".

Memory figures hold under load; seconds do not (another job's load slows them). On a shared
machine the run is stopped when the machine's available memory falls under ``--reserve`` GiB,
rather than have the kernel kill someone's job; a stopped run is reported as such.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

GIB = 2**30
#: how a child's marks are told from the rest of its stderr
MARK = "@@llm-memory"
SAMPLE_SECONDS = 0.2


# -- the child: optimize, with its stages and costly steps marked ------------------------------


def _proc_status(pid: int | str = "self") -> dict[str, int]:
    """The ``Vm*``/``Rss*`` lines of ``/proc/<pid>/status``, in bytes (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _mark(event: str, name: str) -> None:
    status = _proc_status()
    rss, hwm = status.get("VmRSS", 0), status.get("VmHWM", 0)
    print(f"{MARK} {event} {rss} {hwm} {name}", file=sys.stderr, flush=True)


def _marked(name: str, function):
    """``function``, marking its start and end (``functools.wraps`` keeps the ``__module__``
    the run names its stages by)."""

    @functools.wraps(function)
    def marked(*args, **kwargs):
        _mark("enter", name)
        try:
            return function(*args, **kwargs)
        finally:
            _mark("exit", name)

    return marked


def _instrument() -> None:
    """Mark the run's stages and the steps inside them that hold or copy weights."""
    import onnxruntime
    import torch

    import fxopt.run.driver as run
    from fxopt.plugins import tasks
    from fxopt.plugins.huggingface import loader
    from fxopt.plugins.onnx import export
    from fxopt.plugins.onnxruntime import backend
    from fxopt.run import capture, reference, verify, write

    run.STAGES = tuple(_marked(s.__module__.rsplit(".", 1)[-1], s) for s in run.STAGES)
    steps = [
        (loader, "_from_pretrained", "transformers from_pretrained"),
        (loader, "check_finite_weights", "finite-weights check"),
        (reference, "run_batches", "eager batches"),
        (capture, "_own_weights", "the IR's own copy of the weights"),
        (torch.export, "export", "torch.export"),
        (torch.export, "save", "torch.export.save"),
        (torch.onnx, "export", "torch.onnx.export"),
        (export, "_save_program", "ONNX save (weights streamed to disk)"),
        (export, "save_onnx", "onnx save (external data)"),
        (backend, "rewrite_file", "QDQ check"),
        (onnxruntime.InferenceSession, "__init__", "ONNX Runtime session"),
        (verify, "run_batches", "artifact batches"),
        (tasks.CausalLM, "judge", "perplexity + generation"),
        (write, "build_manifest", "manifest"),
    ]
    for owner, attribute, name in steps:
        if hasattr(owner, attribute):  # an older fxopt (measured for a before) may lack it
            setattr(owner, attribute, _marked(name, getattr(owner, attribute)))


def child(argv: list[str]) -> int:
    _instrument()
    from fxopt.cli import main

    return main(argv)


# -- the parent: the child's RSS, step by step ---------------------------------------------------


@dataclass
class Span:
    """One marked stage or step of a run (``path``: its stage › step)."""

    path: str
    depth: int
    start_s: float
    rss_start: int
    hwm_start: int
    peak_sampled: int = 0
    #: the file-backed part of the highest sample (mapped weights: safetensors, ONNX data)
    peak_file: int = 0
    end_s: float | None = None
    rss_end: int | None = None
    hwm_end: int | None = None

    @property
    def peak(self) -> int:
        return max(self.peak_sampled, self.rss_start, self.rss_end or 0)


@dataclass
class Measured:
    """One ``optimize`` process: its exit status, kernel peak, steps and RSS samples."""

    returncode: int | None = None
    peak_rss: int = 0
    stopped: str | None = None
    spans: list[Span] = field(default_factory=list)
    samples: list[tuple[float, int, int, int, str]] = field(default_factory=list)
    load_max: float = 0.0


class Watch:
    """Follows a child: its marks (from stderr) and its RSS (sampled from ``/proc``)."""

    def __init__(self, pid: int, reserve: int) -> None:
        self.pid, self.reserve = pid, reserve
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.open: list[Span] = []
        self.result = Measured()
        self.done = threading.Event()

    def label(self) -> str:
        if self.open:
            return self.open[-1].path
        return "after the stages" if self.result.spans else "start-up"

    def on_line(self, line: str) -> bool:
        """Take one stderr line; ``False`` when it is not a mark (the child's own output)."""
        if not line.startswith(MARK):
            return False
        _, event, rss, hwm, name = line.rstrip("\n").split(" ", 4)
        now = time.monotonic() - self.started
        with self.lock:
            if event == "enter":
                path = f"{self.open[-1].path} › {name}" if self.open else name
                span = Span(path, len(self.open), now, int(rss), int(hwm))
                self.open.append(span)
                self.result.spans.append(span)
            elif self.open:
                span = self.open.pop()
                span.end_s, span.rss_end, span.hwm_end = now, int(rss), int(hwm)
        return True

    def sample(self) -> None:
        """Every ``SAMPLE_SECONDS`` until the child is gone: its RSS into the open spans, and
        the machine's available memory (the child is stopped under ``reserve``)."""
        while not self.done.wait(SAMPLE_SECONDS):
            status = _proc_status(self.pid)
            if "VmRSS" not in status:
                continue
            rss, mapped = status["VmRSS"], status.get("RssFile", 0)
            with self.lock:
                for span in self.open:
                    if rss > span.peak_sampled:
                        span.peak_sampled, span.peak_file = rss, mapped
                self.result.samples.append(
                    (
                        round(time.monotonic() - self.started, 2),
                        rss,
                        status.get("RssAnon", 0),
                        mapped,
                        self.label(),
                    )
                )
            self.result.load_max = max(self.result.load_max, os.getloadavg()[0])
            if _available() < self.reserve and self.result.stopped is None:
                self.result.stopped = f"machine memory under the reserve at {self.label()}"
                os.kill(self.pid, 9)


def _available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return sys.maxsize


def measure(argv: list[str], log: Path, reserve: int) -> Measured:
    """Run ``optimize argv`` in a marked child; its output (marks included) goes to ``log``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *argv]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    watch = Watch(process.pid, reserve)
    sampler = threading.Thread(target=watch.sample, daemon=True)
    sampler.start()
    with log.open("w", encoding="utf-8") as sink:
        for line in process.stderr:
            watch.on_line(line)
            sink.write(line)
    # wait4: this child's own peak, not the largest of every child so far (RUSAGE_CHILDREN)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    watch.done.set()
    sampler.join()
    watch.result.returncode = process.returncode
    watch.result.peak_rss = usage.ru_maxrss * 1024
    return watch.result


# -- the report ----------------------------------------------------------------------------------


def weight_bytes(model: Path) -> int:
    """The model's weights as float32 bytes, from its safetensors headers (a tied embedding is
    stored, and counted, once)."""
    total = 0
    for file in sorted(model.glob("*.safetensors")):
        with file.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += 4 * functools.reduce(lambda a, b: a * b, entry["shape"], 1)
    return total


def peak_span(measured: Measured) -> str:
    """The innermost step within which the process reached its peak (its high-water mark
    rose to the final one there), or where the last samples were."""
    final = max((s.hwm_end or 0 for s in measured.spans), default=0)
    inside = [s for s in measured.spans if s.hwm_end == final and s.hwm_start < final]
    if inside:
        return max(inside, key=lambda s: s.depth).path
    return measured.samples[-1][4] if measured.samples else "?"


def rows(measured: Measured, minimum: int = 64 * 2**20, slow: float = 2.0) -> list[dict]:
    """Every stage, and each step that moved RSS by ``minimum`` bytes or more or took
    ``slow`` seconds (a step that holds nothing is worth seeing too: the streamed save)."""
    out = []
    for span in measured.spans:
        end = span.rss_end if span.rss_end is not None else span.peak
        moved = max(span.peak - span.rss_start, abs(end - span.rss_start))
        seconds = (span.end_s or span.start_s) - span.start_s
        if span.depth == 0 or moved >= minimum or seconds >= slow:
            out.append(
                {
                    "step": span.path,
                    "depth": span.depth,
                    "seconds": round(seconds, 1),
                    "rss_start_gib": round(span.rss_start / GIB, 2),
                    "peak_gib": round(span.peak / GIB, 2),
                    # None: no sample fell inside (a step shorter than the sampling)
                    "peak_file_backed_gib": round(span.peak_file / GIB, 2)
                    if span.peak_sampled
                    else None,
                    "rss_end_gib": round(end / GIB, 2),
                }
            )
    return out


def print_run(name: str, weights: int, run: dict) -> None:
    status = "ok" if run["returncode"] == 0 else f"exit {run['returncode']}"
    if run["stopped"]:
        status = f"stopped: {run['stopped']}"
    print(
        f"\n{name}: peak RSS {run['peak_rss'] / GIB:.2f} GiB = "
        f"{run['peak_rss'] / weights:.2f}x the fp32 weights ({status}); peak in: {run['peak_in']}"
    )
    print(f"  {'stage › step':<44} {'s':>6} {'start':>6} {'peak':>6} {'mapped':>6} {'end':>6} GiB")
    for row in run["steps"]:
        step = "  " * row["depth"] + row["step"].rsplit(" › ", 1)[-1]
        print(
            f"  {step:<44} {row['seconds']:>6.1f} {row['rss_start_gib']:>6.2f} "
            f"{row['peak_gib']:>6.2f} {_gib(row['peak_file_backed_gib']):>6} "
            f"{row['rss_end_gib']:>6.2f}"
        )
    print(f"  optimize's seconds per stage (void under load): {run['seconds']}")


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def machine() -> dict:
    """What the figures were taken on."""
    total = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    versions = {}
    for package in ("torch", "onnxruntime", "onnx", "transformers"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {
        "uname": " ".join(os.uname()),
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(total / GIB, 1),
        "python": platform.python_version(),
        "versions": versions,
    }


def run_recipe(name: str, model: Path, work: Path, args: argparse.Namespace) -> dict:
    """Build the variant ``name`` of ``llm_decode.VARIANTS`` in a fresh, measured process with
    a cache directory of its own; its figures (printed, and for ``--json``)."""
    from llm_decode import write_recipe

    slug = name.replace(" ", "-")
    recipe = write_recipe(work, name)
    out, cache = work / slug, work / f"{slug}-cache"
    for old in (out, cache):
        shutil.rmtree(old, ignore_errors=True)
    load_before = os.getloadavg()
    argv = [str(recipe), str(model), "-o", str(out), "--cache-dir", str(cache)]
    measured = measure(argv, work / f"{slug}.log", int(args.reserve * GIB))
    report = out / "report.json"
    seconds = json.loads(report.read_text())["seconds"] if report.exists() else {}
    if not args.keep:  # a 1B model's fp32 output and its cached copy: 12 GB
        for done in (out, cache):
            shutil.rmtree(done, ignore_errors=True)
    return {
        "returncode": measured.returncode,
        "stopped": measured.stopped,
        "peak_rss": measured.peak_rss,
        "peak_in": peak_span(measured),
        "seconds": seconds,
        "load_before": load_before,
        "load_max": measured.load_max,
        "load_after": os.getloadavg(),
        "steps": rows(measured),
        "spans": [asdict(s) for s in measured.spans],
        "samples": measured.samples,
    }


def print_summary(result: dict) -> None:
    weights = result["weight_bytes"]
    print(f"\n{'recipe':<12} {'fp32 weights':>12} {'peak RSS':>9} {'ratio':>6}  peak in")
    for name, run in result["runs"].items():
        print(
            f"{name:<12} {weights / GIB:>8.2f} GiB {run['peak_rss'] / GIB:>5.2f} GiB "
            f"{run['peak_rss'] / weights:>5.2f}x  {run['peak_in']}"
        )
        print(
            f"{'':<12} load average before {run['load_before'][0]:.2f}, highest "
            f"{run['load_max']:.2f}, after {run['load_after'][0]:.2f} (1-min)"
        )
    print(
        f"{result['uname']}; {result['nproc']} cpus, {result['memory_gib']} GiB; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    )


def main() -> None:
    from llm_decode import VARIANTS, shape_model

    from fxopt.testing.language_models import SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--model", type=Path, help="a written model directory instead")
    parser.add_argument("--recipes", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--work", type=Path, help="where recipes, outputs and logs go")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (GBs each)")
    parser.add_argument("--reserve", type=float, default=1.0, help="GiB the machine keeps free")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="llm-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or shape_model(work / "model", args.shape)
    weights = weight_bytes(model)
    result = {"model": str(model), "weight_bytes": weights, **machine(), "runs": {}}
    print(f"{model}: fp32 weights {weights:,} bytes ({weights / GIB:.2f} GiB); logs in {work}")
    for name in args.recipes:
        run = result["runs"][name] = run_recipe(name, model, work, args)
        print_run(name, weights, run)
    print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2:]))
    main()
