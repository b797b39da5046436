"""Decode speed after pruning a decoder, against how much its work shrinks.

    python benchmarks/llm_prune_decode.py                        # the work ratio, every shape
    python benchmarks/llm_prune_decode.py --measure qwen2-0.5b   # + both artifacts timed

**The work ratio ("bound").** One decode step reads every weight of every linear layer once
(the LM head included; the embedding table is only gathered from, one row) and does one
multiply-add per weight, plus the attention over the cache:
``2 x query heads x head_dim x (past + 1)`` multiply-adds per layer, reading
``2 x KV heads x head_dim x past`` cached values. Pruning
``--ffn`` of the FFN channels and ``--kv`` of the key/value groups (whole groups, each with
its query heads) removes a known share of each; the LM head and the embedding table stay. At
equal precision and equal kernel efficiency a step speeds up by as much as its work shrinks,
so the ratio printed is what pruning alone should give on the same backend. It is an
estimate, not a ceiling (kernels may run smaller matrices more or less efficiently), but the
longer measured runs land on it. Counted from the config's sizes (Llama-style:
grouped-query attention, SwiGLU FFN, biases left out).

**The measurement** (``--measure SHAPE``): ``llm_decode.py``'s fp32 and pruned-fp32 artifacts
of the random-weight model of that shape, built by ``optimize``, then on ONNX Runtime (2
threads, sessions that do not spin while the other runs), visited in turn each round:

- one decode step (``session.run`` alone) at ``--past`` cached tokens, median of ``--iters``;
- whole generations through fxopt's generation loop (a 32-token prompt, 32 new tokens),
  decode tokens/s.

The load average before and after is printed: figures from a loaded machine are void.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fxopt.testing.language_models import SHAPES

#: examples/tinylm's default shape (a trained Llama; untied LM head)
TINYLM = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
}


def step_work(sizes: dict, past: int) -> dict[str, float]:
    """Multiply-adds and fp32 bytes read of one decode step at ``past`` cached tokens."""
    hidden, inter = sizes["hidden_size"], sizes["intermediate_size"]
    heads, kv = sizes["num_attention_heads"], sizes["num_key_value_heads"]
    head_dim = sizes.get("head_dim") or hidden // heads
    layers = sizes["num_hidden_layers"]
    per_layer = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim + 3 * hidden * inter
    linear = layers * per_layer + sizes["vocab_size"] * hidden  # + the LM head
    attention_macs = layers * 2 * heads * head_dim * (past + 1)
    cache_values = layers * 2 * kv * head_dim * past
    return {
        "linear_weights": linear,
        "macs": linear + attention_macs,
        "bytes": 4 * (linear + cache_values),
    }


def pruned_sizes(sizes: dict, ffn: float, kv: float) -> tuple[dict, int]:
    """``sizes`` less ``ffn`` of the FFN channels and ``kv`` of the KV groups (whole groups,
    rounded half up, at least one kept, each with its query heads); and the groups removed."""
    groups = sizes["num_key_value_heads"]
    removed = min(groups - 1, math.floor(groups * kv + 0.5))
    per_group = sizes["num_attention_heads"] // groups
    head_dim = sizes.get("head_dim") or sizes["hidden_size"] // sizes["num_attention_heads"]
    out = dict(sizes)
    out["intermediate_size"] = sizes["intermediate_size"] - round(sizes["intermediate_size"] * ffn)
    out["num_key_value_heads"] = groups - removed
    out["num_attention_heads"] = per_group * (groups - removed)
    out["head_dim"] = head_dim
    return out, removed


def bounds(ffn: float, kv: float, past: int) -> list[dict]:
    rows = []
    for name, sizes in {**{k: v for k, (_, v) in SHAPES.items()}, "tinylm": TINYLM}.items():
        groups = sizes["num_key_value_heads"]
        small, removed = pruned_sizes(sizes, ffn, kv)
        before, after = step_work(sizes, past), step_work(small, past)
        rows.append(
            {
                "shape": name,
                "kv_groups": f"{groups} -> {groups - removed}",
                "weights_before": before["linear_weights"],
                "weights_after": after["linear_weights"],
                "bound_by_macs": round(before["macs"] / after["macs"], 3),
                "bound_by_bytes": round(before["bytes"] / after["bytes"], 3),
            }
        )
    return rows


def measure(shape: str, work: Path, past: int, rounds: int, iters: int) -> dict:
    """Step and generation speed of the fp32 and pruned-fp32 artifacts of ``shape``."""
    import onnxruntime as ort
    from llm_decode import PRUNED, build_outputs, cache_of, ort_runner, shape_model

    from fxopt.plugins.huggingface.causal_lm import cache_names
    from fxopt.plugins.huggingface.generation import Generator

    if PRUNED["fxopt pruned-fp32"][0]["config"] != {"ffn": 0.25, "kv_heads": 0.5}:
        raise SystemExit("llm_decode.PRUNED changed: update the ratios printed here")
    model = shape_model(work / "model", shape)
    outs = build_outputs(model, work, ("fxopt fp32", "fxopt pruned-fp32"))
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]

    runners = {name: ort_runner(out) for name, out in outs.items()}
    rng = np.random.default_rng(0)
    feeds = {}
    for name, out in outs.items():
        kv, dim = cache_of(out)
        feeds[name] = {
            "input_ids": np.asarray([[7]], np.int64),
            "attention_mask": np.ones((1, past + 1), np.int64),
            "position_ids": np.asarray([[past]], np.int64),
            **{
                n: rng.standard_normal((1, kv, past, dim), dtype=np.float32)
                for n in cache_names(layers)
            },
        }
    generators = {name: Generator(runners[name], cache_of(out)) for name, out in outs.items()}
    prompt = [int(t) for t in rng.integers(2, 1000, 32)]
    steps = {name: [] for name in runners}
    decode = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            for _ in range(3):
                runner.run(feeds[name])
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                runner.run(feeds[name])
                times.append(time.perf_counter() - start)
            steps[name].append(statistics.median(times) * 1e3)
            generators[name].generate(prompt, 4)  # warm-up
            decode[name].append(generators[name].generate(prompt, 32).decode_tokens_per_second)
    rows = {
        name: {
            "step_ms": round(statistics.median(steps[name]), 2),
            "decode_tokens_per_s": round(statistics.median(decode[name]), 2),
        }
        for name in runners
    }
    full, pruned = rows["fxopt fp32"], rows["fxopt pruned-fp32"]
    return {
        "shape": shape,
        "past": past,
        "rows": rows,
        "step_speedup": round(full["step_ms"] / pruned["step_ms"], 3),
        "decode_speedup": round(pruned["decode_tokens_per_s"] / full["decode_tokens_per_s"], 3),
        "versions": {"onnxruntime": ort.__version__},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ffn", type=float, default=0.25, help="share of FFN channels removed")
    parser.add_argument("--kv", type=float, default=0.25, help="share of KV groups removed")
    parser.add_argument("--past", type=int, default=64, help="cached tokens at the step")
    parser.add_argument("--measure", choices=sorted(SHAPES), help="also build and time this shape")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--work", type=Path, help="where the model and artifacts go (kept)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result: dict = {"bounds": bounds(args.ffn, args.kv, args.past)}
    print(
        f"bound: a decode step at {args.past} cached tokens, "
        f"FFN -{args.ffn:.0%}, KV groups -{args.kv:.0%}"
    )
    print(f"{'shape':<14} {'KV groups':>10} {'weights read':>22} {'by MACs':>9} {'by bytes':>9}")
    for r in result["bounds"]:
        weights = f"{r['weights_before'] / 1e6:.1f}M -> {r['weights_after'] / 1e6:.1f}M"
        print(
            f"{r['shape']:<14} {r['kv_groups']:>10} {weights:>22} "
            f"{r['bound_by_macs']:>8.3f}x {r['bound_by_bytes']:>8.3f}x"
        )
    if args.measure:
        work = args.work or Path(tempfile.mkdtemp(prefix="llm-prune-decode-"))
        work.mkdir(parents=True, exist_ok=True)
        got = measure(args.measure, work, args.past, args.rounds, args.iters)
        result["measured"] = got
        print(
            f"\nmeasured, {args.measure} (FFN -25%, KV groups 2 -> 1), ONNX Runtime fp32, 2 threads"
        )
        for name, row in got["rows"].items():
            print(
                f"{name:<20} step {row['step_ms']:>8.2f} ms   "
                f"decode {row['decode_tokens_per_s']:>7.2f} tok/s"
            )
        print(
            f"pruned/unpruned: step {got['step_speedup']:.3f}x, decode {got['decode_speedup']:.3f}x"
        )
    result["load_before"], result["load_after"] = load_before, os.getloadavg()
    result["machine"] = platform.processor() or platform.machine()
    print(f"load average before {load_before}, after {result['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
