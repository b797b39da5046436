"""examples/tinylm: a small Llama trained on the standard library's source, saved for
transformers. The fast tests run the script on a tiny budget and check its determinism; the
slow one builds the real model and checks it is a language model (far below a unigram)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "tinylm" / "tinylm.py"

#: a model and data small enough for seconds of CPU
TINY = {
    "layers": 1,
    "hidden": 64,
    "heads": 4,
    "kv_heads": 2,
    "vocab": 512,
    "seq_len": 64,
    "max_train_bytes": 300_000,
    "heldout_bytes": 20_000,
    "eval_cap": 1024,
    "threads": 1,
}
FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "heldout.txt",
    "training.json",
)


def tinylm_module():
    return load_script(SCRIPT, "fxopt_tinylm_example")


pytestmark = pytest.mark.usefixtures("one_thread")


def flags(**options) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]


def test_script_writes_a_model_transformers_loads(tmp_path):
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    out = tmp_path / "tinylm"
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--minutes", "0.2", *flags(**TINY)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "held-out perplexity" in result.stdout
    assert "sample:" in result.stdout
    for name in FILES:
        assert (out / name).is_file(), name

    record = json.loads((out / "training.json").read_text())
    assert record["seed"] == 0
    assert record["steps"] >= 1
    assert record["tokens_seen"] == record["steps"] * 8 * TINY["seq_len"]
    for field in (
        "wall_seconds",
        "train_loss",
        "heldout_nll",
        "heldout_perplexity",
        "unigram_perplexity",
    ):
        assert math.isfinite(record[field]) and record[field] > 0, field
    assert record["heldout_tokens"] == TINY["eval_cap"]
    assert record["parameters"] > 0

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == "<|eos|>" and tokenizer.bos_token == "<|bos|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer("def f():")["input_ids"][0] == tokenizer.bos_token_id
    assert len(tokenizer) == TINY["vocab"]

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(model, LlamaForCausalLM)
    config = model.config
    assert config.num_hidden_layers == TINY["layers"] and config.hidden_size == TINY["hidden"]
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    assert config.tie_word_embeddings is False
    assert config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]

    # heldout.txt and the saved tokenizer give back the perplexity training.json reports
    ppl = tinylm_module().heldout_perplexity(
        model,
        tokenizer,
        (out / "heldout.txt").read_text(encoding="utf-8"),
        window=TINY["seq_len"],
        cap=TINY["eval_cap"],
    )
    assert ppl == pytest.approx(record["heldout_perplexity"], rel=1e-4)

    inputs = tokenizer("def", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_heldout_files_are_never_trained_on():
    module = tinylm_module()
    train, heldout = module.load_corpus()
    names = [name for name, _ in train]
    held = {name for name, _ in heldout}
    assert names == sorted(names) and heldout
    assert not held & set(names)
    assert sum(len(text.encode()) for _, text in heldout) <= 256_000
    for name in [*names, *held]:
        assert not set(name.split("/")[:-1]) & module.SKIPPED_DIRS, name
    # the split does not move when the training set is cut short
    assert {name for name, _ in module.load_corpus(max_train_bytes=100_000)[1]} == held


def test_same_seed_same_tokenizer_and_steps():
    module = tinylm_module()
    train, _ = module.load_corpus(heldout_bytes=20_000, max_train_bytes=150_000)
    texts = [text for _, text in train]
    tokenizer = module.train_tokenizer(texts, 512)
    assert tokenizer.to_str() == module.train_tokenizer(texts, 512).to_str()
    stream = module.encode_stream(tokenizer, texts)

    def train(seed: int = 0, bf16: bool = False, **how) -> tuple[dict, dict[str, torch.Tensor]]:
        model = module.make_model(512, layers=1, hidden=64, heads=4, kv_heads=2, seed=seed)
        record = module.train_steps(
            model, stream, batch=2, seq_len=32, warmup=5, seed=seed, bf16=bf16, log=print, **how
        )
        assert record["steps"] >= 1 and math.isfinite(record["train_loss"])
        return record, model.state_dict()

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(a[name], b[name]) for name in a)

    # float32, and the bf16 autocast the default build takes where the CPU has it natively
    for bf16 in sorted({False, module.bf16_supported()}):
        (_, first), (_, again) = train(0, bf16, steps=8), train(0, bf16, steps=8)
        assert same(first, again)
        assert not same(first, train(1, bf16, steps=8)[1])

    # the warm-up does not depend on the plan
    assert same(train(steps=4)[1], train(steps=4, plan=[[0, 1000]])[1])
    # a run against the clock records its plan, and the plan replays it weight for weight
    timed, weights = train(deadline=time.monotonic() + 2.0, replan_every=0.3)
    replayed, again = train(steps=timed["steps"], plan=timed["plan"])
    assert replayed["losses"] == timed["losses"] and same(weights, again)


@pytest.fixture(scope="session")
def tinylm_dir(tmp_path_factory) -> Path:
    """The default build (about 12 minutes), once per session, or once ever under
    ``$TINYLM_CACHE_DIR`` (keyed by the script's sha256)."""
    cache = os.environ.get("TINYLM_CACHE_DIR") or tmp_path_factory.mktemp("tinylm-cache")
    return tinylm_module().cached_build(cache)


@pytest.mark.slow
def test_default_build_is_a_language_model(tinylm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((tinylm_dir / "training.json").read_text())
    assert record["wall_seconds"] < 15 * 60
    assert record["heldout_tokens"] >= 16_384
    assert record["heldout_perplexity"] < 0.5 * record["unigram_perplexity"]

    tokenizer = AutoTokenizer.from_pretrained(tinylm_dir)
    model = AutoModelForCausalLM.from_pretrained(tinylm_dir).eval()
    assert 4 <= model.config.num_hidden_layers <= 6
    # byte-level BPE: the space belongs to the next word, so prompt without a trailing one
    inputs = tokenizer("def", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    text = tokenizer.decode(generated[0], skip_special_tokens=True)
    assert text.startswith("def") and "(" in text, text
