"""What each language-model recipe costs in fidelity, on a trained model, and what pruning buys.

    python examples/tinylm/tinylm.py --out tinylm-out              # once: the trained model
    python benchmarks/llm_fidelity.py --model tinylm-out --json benchmarks/llm_fidelity.json

``optimize`` builds each variant of the trained model from a recipe written here, with a
verification set of the model's held-out files (``heldout.txt``, never trained on), and:

- **fp16**: logits cosine against the original model, from the run's own verification;
- **int8 / int4 weight-only** (``quantize.weight_only``, round to nearest, blocks of 32):
  perplexity on held-out text against the fp32 artifact's, through one ONNX Runtime
  session API;
- **pruned**: ``prune.structured`` (FFN and query heads per key/value head, or whole
  key/value groups) then ``finetune`` distillation (token-level KL on the logits) on the
  model's own training files, the distillation's CPU time reported; its perplexity increase,
  and its decode speed against the unpruned fp32 artifact on the same backend, timed in
  turns in this process (median of ``--rounds``).

The load average is recorded before and after: perplexity and cosine hold under load; decode
speed ratios from a loaded run are void.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "tinylm"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_decode
import tinylm

from fxopt.engine import optimize
from fxopt.engine.console import Output
from fxopt.plugins.huggingface.causal_lm import cache_layout
from fxopt.run.options import RunOptions
from fxopt.testing import recipe_toml

#: characters of text per fine-tune / verification sample (tokenized and cut to the window)
CHUNK = 1200
WINDOW = 128
INT = {"name": "quantize.weight_only", "config": {"block_size": 32, "lm_head": "keep"}}


def distill(steps: int) -> dict:
    return {
        "name": "finetune",
        "config": {
            "objective": "distill",
            "max_steps": steps,
            "lr": 1e-3,
            "warmup_ratio": 0.05,
            "batch_size": 16,
            "evaluate": False,
        },
    }


def variants(steps: int) -> dict[str, list[dict]]:
    """Variant name -> the recipe's passes."""
    # half the query heads of each group: 8 -> 4 heads (3 per group, 6 heads, would not
    # divide tinylm's hidden size, which transformers refuses in config.json)
    ffn_and_queries = {"name": "prune.structured", "config": {"ffn": 0.25, "heads": 0.5}}
    ffn_and_groups = {"name": "prune.structured", "config": {"ffn": 0.25, "kv_heads": 0.5}}
    return {
        "fp32": [],
        "fp16": [{"name": "cast.fp16"}],
        "int8 weight-only": [{**INT, "config": {**INT["config"], "bits": 8}}],
        "int4 weight-only": [{**INT, "config": {**INT["config"], "bits": 4}}],
        "pruned ffn+heads, no distill": [ffn_and_queries],
        "pruned ffn+heads + distill": [ffn_and_queries, distill(steps)],
        "pruned ffn+kv groups + distill": [ffn_and_groups, distill(steps)],
    }


def write_data(model: Path, work: Path, samples: int) -> tuple[Path, Path]:
    """``(train.jsonl, heldout.jsonl)``: chunks of the model's training files (the
    distillation's text) and of its held-out text (verification)."""
    train, _ = tinylm.load_corpus()
    chunks = [text[i : i + CHUNK] for _, text in train for i in range(0, len(text), CHUNK)]
    step = max(1, len(chunks) // samples)
    picked = [c for c in chunks[::step] if len(c) > CHUNK // 2][:samples]
    held = (model / "heldout.txt").read_text(encoding="utf-8")
    heldout = [held[i : i + CHUNK] for i in range(0, len(held), CHUNK)][:64]
    paths = work / "train.jsonl", work / "heldout.jsonl"
    for path, texts in zip(paths, (picked, heldout), strict=True):
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return paths


def recipe(passes: list[dict], train: Path, heldout: Path, samples: int) -> dict:
    text = {"source": "jsonl", "sequence_length": WINDOW}
    return {
        "schema_version": 1,
        "model": {
            "task": "causal-lm",
            "dims": {
                "batch": {"min": 1, "opt": 1, "max": 16},
                "sequence": {"min": 1, "opt": 64, "max": WINDOW},
                "past_sequence": {"min": 0, "opt": 64, "max": 256},
            },
        },
        "data": {
            "verification": {**text, "path": str(heldout), "samples": 16, "batch_size": 4},
            "finetune": {**text, "path": str(train), "samples": samples, "batch_size": 16},
        },
        "target": {"backend": "onnxruntime", "options": {"intra_op_threads": 2}},
        "verify": {
            "min_cosine": -1.0,
            "pass_samples": 0,
            "latency": False,
            "generation_prompts": 4,
            "generation_tokens": 16,
        },
        "passes": passes,
    }


def build(model: Path, work: Path, name: str, spec: dict, reuse: bool) -> tuple[Path, dict]:
    """The variant's output, built by ``optimize`` (kept from an earlier run of this script
    with ``reuse``, when its recipe is the same: decode speed timed again on a quiet
    machine without rebuilding)."""
    path = work / (name.replace(" ", "-").replace("+", "") + ".toml")
    text = recipe_toml(spec)
    out = work / path.stem
    report = out / "report.json"
    if reuse and report.exists() and path.exists() and path.read_text(encoding="utf-8") == text:
        print(f"reusing {name}", flush=True)
        return out, json.loads(report.read_text(encoding="utf-8"))
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    # the work directory is this script's own: its earlier outputs may be replaced
    optimize(path, model, out, options=RunOptions(force=True), output=Output())
    print(f"built {name} in {time.perf_counter() - start:.0f} s", flush=True)
    return out, json.loads((out / "report.json").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="trained model (tinylm.py)")
    parser.add_argument("--distill-steps", type=int, default=1200)
    parser.add_argument("--samples", type=int, default=4096, help="distillation samples")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--only", nargs="*", help="build only these variants (and fp32)")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--reuse", action="store_true", help="keep outputs of an earlier run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="llm-fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    train, heldout = write_data(args.model, work, args.samples)
    chosen = variants(args.distill_steps)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k == "fp32" or k in args.only}
    built = {
        name: build(
            args.model, work, name, recipe(passes, train, heldout, args.samples), args.reuse
        )
        for name, passes in chosen.items()
    }
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    text = (args.model / "heldout.txt").read_text(encoding="utf-8")[:40000]
    rows: dict[str, dict] = {}
    for name, (out, report) in built.items():
        _, kv, dim = cache_layout(json.loads((out / "config.json").read_text()))
        metrics = report["verify"]["metrics"]
        ppl = llm_decode.perplexity_of(out / "model.ort.onnx", text, tokenizer, (kv, dim))
        finetune = [p for p in report["passes"] if p["name"] == "finetune"]
        rows[name] = {
            "logits_cosine": round(metrics["cosine_mean"], 6),
            "perplexity": round(ppl, 3),
            "generation_agreement": round(metrics.get("generation_agreement", float("nan")), 3),
            "parameters": report["model"]["params_after"],
            "distill_seconds": finetune[0]["metrics"].get("train_seconds") if finetune else None,
            "cache": (kv, dim),
        }
    base = rows["fp32"]["perplexity"]
    for row in rows.values():
        row["perplexity_increase"] = round(row["perplexity"] / base - 1.0, 4)
    timed = {n: b for n, b in built.items() if n == "fp32" or n.startswith("pruned")}
    speeds = decode_speeds(timed, rows, tokenizer, args.rounds, args.new_tokens)
    for name, speed in speeds.items():
        rows[name]["decode_tokens_per_s"] = round(speed, 1)
        rows[name]["decode_vs_fp32"] = round(speed / speeds["fp32"], 2)
    load_after = os.getloadavg()
    print_table(rows, load_before, load_after)
    if args.json:
        import onnxruntime as ort

        result = {
            "model": str(args.model),
            "rows": rows,
            "load_before": load_before,
            "load_after": load_after,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def decode_speeds(built, rows, tokenizer, rounds: int, new: int) -> dict[str, float]:
    """Median decode tokens/s of each artifact, the artifacts visited in turn each round."""
    import onnxruntime as ort

    from fxopt.plugins.onnxruntime.backend import OrtRunner

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    # the sessions take turns: an idle one's threads must not spin on the cores the next
    # one runs on (they do by default, for a while after each run, and slowed the second
    # and later sessions of a round to half speed here)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    runners = {
        name: llm_decode.ours(
            OrtRunner(out / "model.ort.onnx", options, ["CPUExecutionProvider"]),
            tuple(rows[name]["cache"]),
        )
        for name, (out, _) in built.items()
    }
    prompt = tokenizer("def parse(text):\n    " * 20)["input_ids"][:32]
    seen: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, generate in runners.items():
            generate(prompt, 4)  # warm-up on every visit
            tokens, _, seconds = generate(prompt, new)
            seen[name].append((len(tokens) - 1) / seconds)
    return {name: statistics.median(values) for name, values in seen.items()}


def print_table(rows: dict[str, dict], load_before, load_after) -> None:
    print(f"\n{'variant':<32} {'cosine':>9} {'ppl':>8} {'ppl +%':>7} {'gen':>5} {'tok/s':>7}")
    for name, row in rows.items():
        speed = row.get("decode_tokens_per_s")
        ratio = f" ({row['decode_vs_fp32']:.2f}x)" if speed else ""
        print(
            f"{name:<32} {row['logits_cosine']:>9.5f} {row['perplexity']:>8.3f} "
            f"{100 * row['perplexity_increase']:>6.2f}% {row['generation_agreement']:>5.2f} "
            f"{speed or float('nan'):>7.1f}{ratio}"
        )
    print(f"load average before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()
