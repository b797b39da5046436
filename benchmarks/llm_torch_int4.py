"""Decode speed of the torch backend's int4 artifact: torch's int4 kernel against the op's
reference kernel and torch eager fp32.

    python benchmarks/llm_torch_int4.py                     # Qwen2-0.5B's shape, random weights
    python benchmarks/llm_torch_int4.py --threads 1 --json /tmp/q05/int4.json

One int4 artifact is built by ``optimize`` (``quantize.weight_only``, round to nearest, block
32, the LM head in int4 too, as ``llm_decode.py``'s int4; ``target.backend = "torch"``) in
``--work`` (default ``/tmp/q05``: the 2 GB model is written there once and reused, and so is
the artifact unless ``--rebuild``). Then, in one process, on the same prompt, greedy, with the
KV cache and fxopt's own generation loop:

- ``torch eager fp32``: the original model;
- ``torch int4 (int4 kernel)``: the artifact as the torch backend loads it (each
  ``fxopt::matmul_nbits`` rewritten to ``fxopt::matmul_int4pack``, torch's
  ``_weight_int4pack_mm_for_cpu``, bfloat16 compute);
- ``torch int4 (reference kernel)``: the same ``.pt2`` run as saved (the op's own kernel:
  unpack, dequantize, ``linear`` on every call); slow, so it generates ``--reference-tokens``.

Reported: median prefill milliseconds, median decode tokens/s (tokens after the first over the
time after the prefill), the ratio to eager, whether the greedy tokens equal eager's (random
weights: near-ties flip easily), the load time of the artifact with and without the packing.
The load average before and after is printed: the machine is shared, so the figures are
indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_decode  # this folder's decode benchmark: its recipe and model writer

from fxopt.engine import optimize
from fxopt.engine.console import Output
from fxopt.engine.plugin_host import load_plugins
from fxopt.engine.task import EagerRunner
from fxopt.plugins.huggingface.causal_lm import CausalLMWithCache, cache_layout, cache_names
from fxopt.plugins.huggingface.generation import Generator
from fxopt.plugins.torch.backend import TorchOptions, TorchRunner
from fxopt.run.options import RunOptions
from fxopt.run.output_dir import load_output
from fxopt.testing import recipe_toml
from fxopt.testing.language_models import SHAPES

#: llm_decode.py's recipe, with the model builder's weight-only settings, on the torch backend
RECIPE = {
    **llm_decode.RECIPE,
    "passes": [
        {"name": "quantize.weight_only", "config": {"bits": 4, "block_size": 32, "lm_head": "same"}}
    ],
    "target": {"backend": "torch", "options": {"onnx": False}},
}


def build(model: Path, out: Path, rebuild: bool) -> None:
    if (out / "report.json").exists() and not rebuild:
        return
    with tempfile.TemporaryDirectory() as work:
        recipe = Path(work) / "recipe.toml"
        recipe.write_text(recipe_toml(RECIPE), encoding="utf-8")
        start = time.perf_counter()
        optimize(recipe, model, out, options=RunOptions(force=True), output=Output())
    print(f"built the torch int4 artifact in {time.perf_counter() - start:.0f} s", flush=True)


def generation(runner, cache: tuple[int, int]):
    generator = Generator(runner, cache)

    def generate(prompt: list[int], new: int) -> tuple[list[int], float, float]:
        done = generator.generate(prompt, new)
        return done.tokens, done.prefill_seconds, done.decode_seconds

    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    parser.add_argument("--work", type=Path, default=Path("/tmp/q05"))
    parser.add_argument("--rebuild", action="store_true", help="build the artifact again")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reference-tokens", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = llm_decode.shape_model(args.work / "model", args.shape)
    out = args.work / "torch-int4"
    build(model, out, args.rebuild)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((model / "config.json").read_text())
    layers, kv, dim = cache_layout(config)
    start = time.perf_counter()
    fast = load_output(out, load_plugins(), Output(quiet=True)).runner
    load_fast = time.perf_counter() - start
    ops = [str(n.target) for n in fast.module.graph.nodes if n.op == "call_function"]
    start = time.perf_counter()
    saved = torch.export.load(str(out / "model.pt2")).module()
    load_saved = time.perf_counter() - start
    reference = TorchRunner(saved, TorchOptions(onnx=False), names=fast.input_names)
    hf = AutoModelForCausalLM.from_pretrained(model).eval()
    names = ["input_ids", "attention_mask", "position_ids", *cache_names(layers)]
    assert fast.input_names == names, fast.input_names
    eager = EagerRunner(CausalLMWithCache(hf, layers).eval(), names)

    runners = {
        "torch eager fp32": (generation(eager, (kv, dim)), args.new_tokens),
        "torch int4 (int4 kernel)": (generation(fast, (kv, dim)), args.new_tokens),
        "torch int4 (reference kernel)": (
            generation(reference, (kv, dim)),
            min(args.reference_tokens, args.new_tokens),
        ),
    }
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = tokenizer("def parse(text):\n    " * 40)["input_ids"][: args.prompt]
    timings = {name: {"prefill": [], "decode": []} for name in runners}
    tokens: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for name, (generate, new) in runners.items():
            generate(prompt, 2)  # warm-up on every visit
            got, prefill, decode = generate(prompt, new)
            tokens[name] = got
            timings[name]["prefill"].append(prefill * 1e3)
            timings[name]["decode"].append((len(got) - 1) / decode)
    load_after = os.getloadavg()

    base = statistics.median(timings["torch eager fp32"]["decode"])
    rows = {}
    for name, t in timings.items():
        decode = statistics.median(t["decode"])
        n = len(tokens[name])
        rows[name] = {
            "new_tokens": n,
            "prefill_ms": round(statistics.median(t["prefill"]), 1),
            "decode_tokens_per_s": round(decode, 2),
            "decode_vs_eager": round(decode / base, 2),
            "same_tokens_as_eager": tokens[name] == tokens["torch eager fp32"][:n],
        }
    n = len(tokens["torch int4 (reference kernel)"])
    agree = tokens["torch int4 (int4 kernel)"][:n] == tokens["torch int4 (reference kernel)"]
    print(f"\n{args.shape}: prompt {len(prompt)} tokens, {args.threads} threads")
    print(f"{'runner':<30} {'new':>4} {'prefill ms':>10} {'decode tok/s':>12} {'vs eager':>9}")
    for name, row in rows.items():
        print(
            f"{name:<30} {row['new_tokens']:>4} {row['prefill_ms']:>10.1f} "
            f"{row['decode_tokens_per_s']:>12.2f} {row['decode_vs_eager']:>8.2f}x"
        )
    print(
        f"int4 kernel ops: {ops.count('fxopt.matmul_int4pack.default')}, reference ops left: "
        f"{ops.count('fxopt.matmul_nbits.default')}; int4 kernel's first {n} tokens equal the "
        f"reference kernel's: {agree}"
    )
    print(f"load: {load_fast:.1f} s with the int4 packing, {load_saved:.1f} s the .pt2 as saved")
    print(f"load average before {load_before}, after {load_after} (indicative only)")
    if args.json:
        result = {
            "shape": args.shape,
            "prompt_tokens": len(prompt),
            "threads": args.threads,
            "rows": rows,
            "int4_kernel_tokens_equal_reference": agree,
            "load_seconds": {"with_packing": load_fast, "as_saved": load_saved},
            "load_before": load_before,
            "load_after": load_after,
            "machine": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
