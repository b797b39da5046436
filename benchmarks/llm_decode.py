"""Decode speed of a decoder language model: fxopt's ONNX Runtime artifacts against peers.

    python benchmarks/llm_decode.py --shape qwen2-0.5b          # random weights, real shape
    python benchmarks/llm_decode.py --model examples/tinylm/out # a trained model: + perplexity

In one process, on the same prompt, greedy, with the KV cache:

- torch eager fp32: the original model through the same generation loop as ours;
- torch dynamic int8 (``torch.ao.quantization.quantize_dynamic`` on its linears);
- fxopt fp32 and fxopt int4 (``quantize.weight_only``, round to nearest, block 32) on
  ONNX Runtime, built by ``optimize`` from recipes written here;
- ONNX Runtime GenAI's model builder int4 for CPU (``onnxruntime-genai`` on PyPI) on the same
  model directory, generating through its own ``og.Generator``.

Each runner generates ``--new-tokens`` tokens after a ``--prompt``-token prompt, ``--rounds``
times, visiting the runners in turn; reported: the median prompt (prefill) milliseconds and the
median decode tokens/s (tokens after the first, over the time after the prefill), and each
runner's decode speed over torch eager fp32. With ``--model`` (a trained model with a
``heldout.txt``), the perplexity of each artifact on that text is measured too, through the
same ONNX Runtime session API for ours and the model builder's.

Write the figures with ``--json PATH``; the load average before and after is printed: a
loaded machine slows torch eager far more than ONNX Runtime, so its ratios are void.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fxopt.engine import optimize
from fxopt.engine.console import Output
from fxopt.engine.task import EagerRunner
from fxopt.plugins.huggingface.causal_lm import CausalLMWithCache, cache_layout, cache_names
from fxopt.plugins.huggingface.generation import Generator
from fxopt.plugins.onnxruntime.backend import OrtRunner
from fxopt.run.options import RunOptions
from fxopt.testing import recipe_toml
from fxopt.testing.language_models import SHAPES, save_causal_lm

RECIPE = {
    "schema_version": 1,
    "model": {
        "task": "causal-lm",
        "dims": {
            "batch": {"min": 1, "opt": 1, "max": 4},
            "sequence": {"min": 1, "opt": 32, "max": 128},
            "past_sequence": {"min": 0, "opt": 64, "max": 256},
        },
    },
    "data": {
        "verification": {
            "source": "stdlib-docstrings",
            "samples": 4,
            "batch_size": 2,
            "sequence_length": 32,
        }
    },
    "target": {"backend": "onnxruntime", "options": {"intra_op_threads": 2}},
    "verify": {
        "min_cosine": -1.0,
        "pass_samples": 0,
        "latency": False,
        "generation_prompts": 2,
        "generation_tokens": 8,
    },
}
#: the model builder quantizes the LM head to int4 too: so does this, for a like comparison
INT4 = {
    "name": "quantize.weight_only",
    "config": {"bits": 4, "block_size": 32, "lm_head": "same", "accuracy_level": 4},
}


#: fxopt's artifacts compared here (and whose build memory ``llm_memory.py`` measures): name
#: -> the recipe's passes
VARIANTS: dict[str, list[dict]] = {"fxopt fp32": [], "fxopt int4": [INT4]}
#: ``--pruned``: a quarter of the FFN and half the key/value groups removed (random weights:
#: what the smaller graph decodes at, not what it predicts)
PRUNED = {
    "fxopt pruned-fp32": [{"name": "prune.structured", "config": {"ffn": 0.25, "kv_heads": 0.5}}]
}


def shape_model(model: Path, shape: str) -> Path:
    """The random-weight model of ``SHAPES[shape]`` at ``model``, written once and reused (a
    1B shape takes a minute and 5 GB to write); written beside it and renamed into place, so
    an interrupted write is never taken for a model."""
    if not (model / "config.json").exists():
        family, sizes = SHAPES[shape]
        partial = model.with_name(model.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_causal_lm(partial, family, **sizes)
        partial.rename(model)
    return model


def write_recipe(work: Path, name: str) -> Path:
    """The recipe of the variant ``name`` (a key of ``VARIANTS`` or ``PRUNED``), in ``work``."""
    recipe = work / f"{name.split()[1]}.toml"
    passes = {**VARIANTS, **PRUNED}[name]
    recipe.write_text(recipe_toml({**RECIPE, "passes": passes}), encoding="utf-8")
    return recipe


def build_outputs(model: Path, work: Path, names=tuple(VARIANTS)) -> dict[str, Path]:
    """fxopt's artifacts of ``model`` (the recipes are written next to them)."""
    outs = {}
    for name in names:
        recipe = write_recipe(work, name)
        out = work / name.replace(" ", "-")
        start = time.perf_counter()
        # the work directory is this script's own: its earlier outputs may be replaced
        optimize(recipe, model, out, options=RunOptions(force=True), output=Output())
        print(f"built {name} in {time.perf_counter() - start:.0f} s", flush=True)
        outs[name] = out
    return outs


def build_genai(model: Path, work: Path) -> Path:
    """The model builder's int4 CPU model of the same directory."""
    out = work / "genai-int4"
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder"]
    command += ["-i", str(model), "-o", str(out), "-p", "int4", "-e", "cpu"]
    command += ["-c", str(work / "genai-cache")]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"built genai int4 in {time.perf_counter() - start:.0f} s", flush=True)
    return out


class GenaiRunner:
    """``og.Generator`` greedy: the prompt, then one token at a time."""

    def __init__(self, directory: Path) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(directory))

    def generate(self, prompt: list[int], new: int) -> tuple[list[int], float, float]:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + new, do_sample=False)
        generator = self.og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens([prompt])
        generator.generate_next_token()
        prefill = time.perf_counter() - start
        tokens = [int(generator.get_next_tokens()[0])]
        start = time.perf_counter()
        while len(tokens) < new and not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return tokens, prefill, time.perf_counter() - start


def cache_of(out: Path) -> tuple[int, int]:
    """``(kv_heads, head_dim)`` of an output's cache, from its own config.json (pruning
    key/value heads shrinks it)."""
    _, kv, dim = cache_layout(json.loads((out / "config.json").read_text()))
    return kv, dim


def ort_runner(out: Path) -> OrtRunner:
    """An ONNX Runtime session of an output's ``model.ort.onnx`` on 2 threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    # the runners take turns: an idle session's threads must not spin on the cores the
    # next runner uses (they do by default, for a while after each run)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return OrtRunner(out / "model.ort.onnx", options, ["CPUExecutionProvider"])


def ours(runner, cache: tuple[int, int]):
    generator = Generator(runner, cache)

    def generate(prompt: list[int], new: int) -> tuple[list[int], float, float]:
        done = generator.generate(prompt, new)
        return done.tokens, done.prefill_seconds, done.decode_seconds

    return generate


def eager(model_dir: Path, dynamic_int8: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if dynamic_int8:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8)
    layers, kv, dim = cache_layout(json.loads((model_dir / "config.json").read_text()))
    wrapped = CausalLMWithCache(model, layers).eval()
    names = ["input_ids", "attention_mask", "position_ids", *cache_names(layers)]
    return ours(EagerRunner(wrapped, names), (kv, dim))


def perplexity_of(
    session_path: Path, text: str, tokenizer, cache: tuple[int, int], window: int = 128
) -> float:
    """Perplexity of an ONNX decoder (ours or the model builder's) on ``text``, in
    non-overlapping windows from an empty cache."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    runner = OrtRunner(session_path, options, ["CPUExecutionProvider"])
    session = runner.session
    ids = tokenizer(text)["input_ids"]
    inputs = {i.name: i for i in session.get_inputs()}
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = np.asarray([ids[start : start + window]], dtype=np.int64)
        if chunk.shape[1] < 2:
            break
        feeds = {"input_ids": chunk, "attention_mask": np.ones_like(chunk)}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(chunk.shape[1], dtype=np.int64)[None]
        for name, value in inputs.items():
            if name.startswith("past_key_values."):
                dtype = np.float16 if "float16" in value.type else np.float32
                feeds[name] = np.zeros((1, *cache[:1], 0, cache[1]), dtype)
        logits = session.run(["logits"], feeds)[0][0, :-1].astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= float(log_probs[np.arange(len(log_probs)), chunk[0, 1:]].sum())
        count += len(log_probs)
    return float(np.exp(total / count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    parser.add_argument("--model", type=Path, help="a trained model directory instead")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, help="where models and artifacts go (kept)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--pruned", action="store_true", help="also a pruned fp32 artifact")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="llm-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or shape_model(work / "model", args.shape)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    _, kv, dim = cache_layout(config)
    outs = build_outputs(model, work, (*VARIANTS, *(PRUNED if args.pruned else ())))
    genai = build_genai(model, work)

    import onnxruntime as ort

    runners = {
        "torch eager fp32": eager(model, dynamic_int8=False),
        "torch dynamic int8": eager(model, dynamic_int8=True),
        **{name: ours(ort_runner(out), cache_of(out)) for name, out in outs.items()},
        "genai int4": GenaiRunner(genai).generate,
    }
    prompt = tokenizer("def parse(text):\n    " * 40)["input_ids"][: args.prompt]
    timings = {name: {"prefill": [], "decode": []} for name in runners}
    tokens = {}
    for _ in range(args.rounds):
        for name, generate in runners.items():
            generate(prompt, 4)  # warm-up on every visit
            got, prefill, decode = generate(prompt, args.new_tokens)
            tokens[name] = got
            timings[name]["prefill"].append(prefill * 1e3)
            timings[name]["decode"].append((len(got) - 1) / decode)
    base = statistics.median(timings["torch eager fp32"]["decode"])
    rows = {}
    for name, t in timings.items():
        decode = statistics.median(t["decode"])
        rows[name] = {
            "prefill_ms": round(statistics.median(t["prefill"]), 2),
            "decode_tokens_per_s": round(decode, 2),
            "decode_vs_eager": round(decode / base, 2),
            "same_tokens_as_eager": tokens[name] == tokens["torch eager fp32"],
        }
    if (model / "heldout.txt").exists():
        text = (model / "heldout.txt").read_text(encoding="utf-8")[:20000]
        sessions = {n: o / "model.ort.onnx" for n, o in outs.items()}
        sessions["genai int4"] = genai / "model.onnx"
        for name, path in sessions.items():
            cache = cache_of(outs[name]) if name in outs else (kv, dim)
            rows[name]["perplexity"] = round(perplexity_of(path, text, tokenizer, cache), 3)
    load_after = os.getloadavg()
    print(f"\n{args.model or args.shape}: prompt {len(prompt)} tokens, {args.new_tokens} new")
    print(f"{'runner':<20} {'prefill ms':>10} {'decode tok/s':>12} {'vs eager':>9} {'ppl':>8}")
    for name, row in rows.items():
        print(
            f"{name:<20} {row['prefill_ms']:>10.1f} {row['decode_tokens_per_s']:>12.1f} "
            f"{row['decode_vs_eager']:>8.2f}x {row.get('perplexity', float('nan')):>8.2f}"
        )
    print(f"load average before {load_before}, after {load_after}")
    result = {
        "model": str(args.model or args.shape),
        "prompt_tokens": len(prompt),
        "new_tokens": args.new_tokens,
        "rows": rows,
        "load_before": load_before,
        "load_after": load_after,
        "machine": platform.processor() or platform.machine(),
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "onnxruntime-genai": __import__("onnxruntime_genai").__version__,
        },
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
