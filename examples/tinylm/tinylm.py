"""Train a tiny Llama on the Python standard library's own source: a real LM, built offline.

No pretrained language model can be downloaded where fxopt's language-model work is checked,
so this script makes one from text every Python installation ships: the standard library's
``*.py`` files (code, comments and docstrings; test suites and data tables left out). It
trains a byte-level BPE tokenizer and a small ``LlamaForCausalLM`` (grouped-query attention,
RoPE, RMSNorm, SwiGLU) and writes an ordinary Hugging Face model directory::

    python examples/tinylm/tinylm.py --out tinylm-out            # about 12 minutes on 2 cores

The directory holds ``model.safetensors``, ``config.json``, ``generation_config.json``, the
tokenizer files (``AutoTokenizer`` loads them), ``heldout.txt`` (files never trained on, for
perplexity checks) and ``training.json`` (what was done and measured: held-out perplexity of
the model and of a unigram baseline).

Everything is seeded: the same ``--seed`` gives the same tokenizer and, step for step, the
same weights on the same machine. ``--minutes`` bounds the whole run (after the imports): the
last step is planned from the speed of the steps so far, again every 30 seconds, and each
plan is recorded in ``training.json``; ``--steps N`` trains exactly N steps, and
``--steps N --plan '<its plan>'`` replays a timed run without looking at the clock.

Tests and benchmarks import it: :func:`build` writes the directory, :func:`cached_build`
builds once per script version and arguments under a cache directory of the caller's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "BOS",
    "EOS",
    "build",
    "cached_build",
    "cosine",
    "heldout_nll",
    "heldout_perplexity",
    "load_corpus",
    "make_model",
    "stdlib_files",
    "train_steps",
    "train_tokenizer",
    "unigram_nll",
]

BOS = "<|bos|>"
EOS = "<|eos|>"

#: directories of the standard library that are not its own source: test suites, the IDLE
#: and 2to3 applications, generated tables and bundled wheels
SKIPPED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "encodings",
        "pydoc_data",
        "ensurepip",
        "site-packages",
        "dist-packages",
        "__pycache__",
    }
)
#: the held-out files are picked by a hash of their path salted with this, not by the seed:
#: every seed is measured on the same text
HELDOUT_SALT = "tinylm-heldout-v1"
HELDOUT_MAX_FILE = 48_000


# ----------------------------------------------------------------------------- data


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``*.py`` files, sorted by path, test suites and tables left out."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts[:-1]
        if any(p in SKIPPED_DIRS or p.startswith("config-") for p in parts):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_corpus(
    root: Path | None = None,
    *,
    heldout_bytes: int = 256_000,
    max_train_bytes: int | None = None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, heldout)``: lists of ``(relative path, text)``, split by file.

    Held-out files are taken in the order of a salted hash of their path (files over
    ``HELDOUT_MAX_FILE`` bytes are never held out) until ``heldout_bytes`` are reached; the
    rest, in path order, is the training set (its first ``max_train_bytes`` when given).
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    texts = []
    for path in stdlib_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if BOS in text or EOS in text or not text.strip():
            continue
        texts.append((path.relative_to(root).as_posix(), text))

    def rank(item: tuple[str, str]) -> str:
        return hashlib.sha256(f"{HELDOUT_SALT}:{item[0]}".encode()).hexdigest()

    held, size = set(), 0
    for name, text in sorted(texts, key=rank):
        n = len(text.encode())
        if n > HELDOUT_MAX_FILE or size + n > heldout_bytes:
            continue
        held.add(name)
        size += n
    heldout = [(n, t) for n, t in texts if n in held]
    train, size = [], 0
    for name, text in texts:
        if name in held:
            continue
        if max_train_bytes is not None and size >= max_train_bytes:
            break
        train.append((name, text))
        size += len(text.encode())
    return train, heldout


def heldout_text(heldout: Sequence[tuple[str, str]]) -> str:
    """The held-out files as one text (``heldout.txt``): the files, one blank line between."""
    return "\n\n".join(text.rstrip("\n") + "\n" for _, text in heldout)


# ------------------------------------------------------------------------ tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096):
    """A byte-level BPE (GPT-2 style pre-tokenization) trained on ``texts``; ``BOS`` is id 0,
    ``EOS`` id 1, and encoding with special tokens puts ``BOS`` in front."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return tok


def hf_tokenizer(tok, max_length: int = 512):
    """``tok`` as a ``PreTrainedTokenizerFast`` (pad = eos)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tok, out_dir: Path, max_length: int = 512) -> None:
    hf = hf_tokenizer(tok, max_length)
    hf.save_pretrained(out_dir)
    # Pin the class: without it AutoTokenizer would take the Llama tokenizer (a SentencePiece
    # style pre-tokenizer), not this byte-level BPE.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.update(bos_token=BOS, eos_token=EOS, pad_token=EOS, add_bos_token=True)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def encode_stream(tok, texts: Sequence[str]) -> torch.Tensor:
    """One token stream: every text as ``BOS text EOS``."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(list(texts), add_special_tokens=False):
        ids.append(bos)
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------- model


def make_model(
    vocab_size: int,
    *,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 8,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
):
    """A freshly initialized ``LlamaForCausalLM``, its weights drawn from ``seed`` (the
    global random state is left as it was)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if intermediate is None:  # ~2.7x hidden, a multiple of 16
        intermediate = 16 * round(hidden * 2.6875 / 16)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return model


def make_optimizer(model, lr: float, weight_decay: float = 0.1):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)


def cosine(progress: float, *, lr: float, min_ratio: float = 0.1) -> float:
    """The learning rate at ``progress`` (0 to 1) of the cosine decay: ``lr`` to
    ``min_ratio * lr``."""
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_steps(
    model,
    stream: torch.Tensor,
    *,
    steps: int | None = None,
    plan: Sequence[Sequence[int]] | None = None,
    deadline: float | None = None,
    reserve: float = 0.0,
    reserve_steps: float = 0.0,
    replan_every: float = 30.0,
    batch: int = 8,
    seq_len: int = 256,
    lr: float = 3e-3,
    warmup: int = 20,
    seed: int = 0,
    bf16: bool = False,
    log_every: float = 5.0,
    log=print,
) -> dict:
    """Train on random windows of ``stream`` (AdamW; linear warm-up over ``warmup`` steps,
    then a cosine decay to a tenth of ``lr`` at the last planned step).

    How many steps: ``steps`` alone trains exactly that many. ``deadline`` alone (a
    ``time.monotonic()`` time) trains as many as fit before it, less ``reserve`` seconds and
    the time of ``reserve_steps`` more steps: the last step is planned after the first few
    and planned again every ``replan_every`` seconds (the machine may be shared: its speed
    changes), from the faster of the speeds over the last period and the last three (the
    reserve from the slower), and
    the cosine's progress runs on smoothly through every change. Each change is returned in
    ``plan`` (``[[step, last step], ...]``); ``plan`` with ``steps`` replays such a run
    without looking at the clock, weight for weight. The warm-up does not depend on the plan.
    """
    timed = plan is None and steps is None
    if timed and deadline is None:
        raise ValueError("give steps, a plan or a deadline")
    if plan is None and steps is not None:
        plan = [[0, steps]]
    if not timed and steps is None:
        if not plan:
            raise ValueError("an empty plan needs steps")
        steps = int(plan[-1][1])
    replay = {int(at): int(last) for at, last in plan or []}
    model.train()
    opt = make_optimizer(model, lr)
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    high = stream.numel() - seq_len - 1
    if high <= 0:
        raise ValueError(f"the training stream ({stream.numel()} tokens) is shorter than a window")
    calib = max(3, min(warmup, 20))
    planned: int | None = None
    recorded: list[list[int]] = []
    progress = 0.0
    losses: list[float] = []
    start = last_log = time.monotonic()
    marks = [(start, 0)]  # (time, step) at every planning: the speed is measured over them
    hold_back = reserve
    logged_tokens, logged_losses = 0, []
    stopped_early = False
    step = 0
    while True:
        now = time.monotonic()
        if not timed:
            planned = replay.get(step, planned)
            if step >= steps:
                break
        else:
            if step == 2:  # the first steps are slow: time from the third one
                marks = [(now, step)]
            if step >= calib and (planned is None or now - marks[-1][0] >= replan_every):
                speeds = [
                    (now - t) / (step - s) for t, s in (marks[-1], marks[max(-3, -len(marks))])
                ]
                per_step = min(speeds)
                hold_back = reserve + reserve_steps * max(speeds)
                left = deadline - hold_back - now
                new = step + max(int(0.97 * left / per_step), 0)
                if new != planned:
                    planned = new
                    recorded.append([step, new])
                    log(f"planned {new} steps ({per_step:.3g} s/step, {left:.0f} s left)")
                marks.append((now, step))
            if planned is not None and step >= planned:
                break
            if step > 0 and now > deadline - hold_back:
                stopped_early = True
                log(f"time is up at step {step}")
                break
        if step < warmup:
            rate = lr * (step + 1) / warmup
        else:
            rate = cosine(progress, lr=lr)
            if planned is not None and planned > step:
                # what progress is left, spread evenly over the steps left
                progress += (1.0 - progress) / (planned - step)
        for group in opt.param_groups:
            group["lr"] = rate
        starts = torch.randint(0, high, (batch,), generator=gen)
        windows = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
        x, y = windows[:, :-1], windows[:, 1:]
        # bf16 autocast around the forward only: autocast caches the bf16 copies of the
        # weights for as long as its context lasts
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        value = loss.item()
        losses.append(value)
        logged_losses.append(value)
        logged_tokens += x.numel()
        now = time.monotonic()
        if now - last_log >= log_every or step == planned:
            log(
                f"step {step}/{planned if planned is not None else '?'}  "
                f"loss {sum(logged_losses) / len(logged_losses):.3f}  lr {rate:.2e}  "
                f"{logged_tokens / (now - last_log):.0f} tok/s  {now - start:.0f} s"
            )
            last_log, logged_tokens, logged_losses = now, 0, []
    model.eval()
    tail = losses[-max(1, min(50, len(losses) // 10)) :] if losses else [float("nan")]
    return {
        "steps": step,
        "plan": recorded if timed else [list(p) for p in plan],
        "stopped_early": stopped_early,
        "tokens_seen": step * batch * seq_len,
        "train_seconds": time.monotonic() - start,
        "train_loss": sum(tail) / len(tail),
        "first_loss": losses[0] if losses else float("nan"),
        "losses": losses,
    }


# ------------------------------------------------------------------------ measuring


@torch.no_grad()
def heldout_nll(
    model, ids: torch.Tensor, *, window: int = 256, cap: int | None = 32_768, batch: int = 8
) -> tuple[float, int]:
    """Mean next-token NLL (nats) over ``ids``: non-overlapping windows of ``window``
    predicted tokens, each window's input starting at the previous window's last target;
    every token but the first is predicted once, up to ``cap`` predicted tokens."""
    ids = ids.reshape(-1)
    n = ids.numel() - 1
    if cap is not None:
        n = min(n, cap)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = list(range(0, n, window))
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        lengths = [min(window, n - s) for s in chunk]
        width = max(lengths)
        x = torch.full((len(chunk), width), 0, dtype=torch.long)
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (s, length) in enumerate(zip(chunk, lengths, strict=True)):
            x[row, :length] = ids[s : s + length]
            y[row, :length] = ids[s + 1 : s + 1 + length]
        logits = model(input_ids=x, use_cache=False).logits.float()
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum", ignore_index=-100
        )
        total += nll.item()
        count += sum(lengths)
    model.train(was_training)
    return total / max(count, 1), count


def heldout_perplexity(
    model, tokenizer, text: str, *, window: int = 256, cap: int | None = 32_768
) -> float:
    """Perplexity of ``model`` on ``text`` (``heldout.txt``) encoded by ``tokenizer`` (a
    Hugging Face tokenizer, ``BOS`` first), as ``training.json`` measures it."""
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
    return math.exp(heldout_nll(model, ids, window=window, cap=cap)[0])


def unigram_nll(train_ids: torch.Tensor, ids: torch.Tensor, vocab: int, cap: int | None) -> float:
    """Mean NLL of the same targets as :func:`heldout_nll` under token frequencies of the
    training stream, add-one smoothed."""
    counts = torch.bincount(train_ids.reshape(-1), minlength=vocab).double() + 1.0
    logp = counts.log() - counts.sum().log()
    targets = ids.reshape(-1)[1:]
    if cap is not None:
        targets = targets[:cap]
    return float(-logp[targets].mean())


# ---------------------------------------------------------------------------- build


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def build(
    out_dir: Path | str,
    *,
    minutes: float = 12.0,
    steps: int | None = None,
    plan: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    vocab: int = 4096,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 8,
    kv_heads: int = 2,
    intermediate: int | None = None,
    seq_len: int = 256,
    batch: int = 8,
    lr: float = 3e-3,
    warmup: int = 20,
    heldout_bytes: int = 256_000,
    max_train_bytes: int | None = None,
    eval_cap: int = 32_768,
    threads: int = 2,
    bf16: bool | None = None,
    sample_prompt: str = "def",
    log=print,
) -> Path:
    """Train the tiny Llama and write its Hugging Face directory to ``out_dir``.

    ``minutes`` bounds the whole run (data, tokenizer, training, evaluation, saving; not
    the imports before it) unless ``steps`` fixes the number of training steps, or ``plan``
    and ``steps`` replay the schedule of an earlier timed run from its ``training.json``
    (see :func:`train_steps`): the same seed and arguments then give the same weights.
    ``bf16`` runs the training forward passes under bf16 autocast (the weights, the
    optimizer and the evaluation stay float32); by default where the CPU has native bf16
    (oneDNN says so). Returns ``out_dir``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    deadline = t0 + 60.0 * minutes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if bf16 is None:
        bf16 = bf16_supported()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train, heldout = load_corpus(heldout_bytes=heldout_bytes, max_train_bytes=max_train_bytes)
        train_bytes = sum(len(t.encode()) for _, t in train)
        held_text = heldout_text(heldout)
        log(
            f"corpus: {len(train)} training files ({train_bytes / 1e6:.2f} MB), "
            f"{len(heldout)} held-out files ({len(held_text.encode()) / 1e3:.0f} KB)"
        )
        tok = train_tokenizer([t for _, t in train], vocab)
        stream = encode_stream(tok, [t for _, t in train])
        log(
            f"tokenizer: {tok.get_vocab_size()} tokens; {stream.numel()} training tokens "
            f"({train_bytes / stream.numel():.2f} bytes/token)  {time.monotonic() - t0:.0f} s"
        )
        model = make_model(
            tok.get_vocab_size(),
            layers=layers,
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            intermediate=intermediate,
            max_positions=512,
            seed=seed,
        )
        params = sum(p.numel() for p in model.parameters())
        log(f"model: {params / 1e6:.2f} M parameters")
        held_ids = torch.tensor(tok.encode(held_text).ids, dtype=torch.long)
        eval_tokens = min(eval_cap, held_ids.numel() - 1)
        result = train_steps(
            model,
            stream,
            steps=steps,
            plan=plan,
            deadline=deadline if steps is None and plan is None else None,
            # evaluation is a forward pass (~1/3 of a training step per token), then saving,
            # reloading and a sample: keep room for them before the deadline
            reserve=10.0,
            reserve_steps=eval_tokens / (batch * seq_len),
            batch=batch,
            seq_len=seq_len,
            lr=lr,
            warmup=warmup,
            seed=seed,
            bf16=bf16,
            log=log,
        )
        t_eval = time.monotonic()
        nll, counted = heldout_nll(model, held_ids, window=seq_len, cap=eval_cap)
        uni = unigram_nll(stream, held_ids, tok.get_vocab_size(), cap=eval_cap)
        log(
            f"held-out perplexity {math.exp(nll):.2f} (unigram {math.exp(uni):.1f}) over "
            f"{counted} tokens  {time.monotonic() - t_eval:.0f} s"
        )

        model.save_pretrained(out, safe_serialization=True)
        save_tokenizer(tok, out)
        (out / "heldout.txt").write_text(held_text, encoding="utf-8")

        # what a user of the directory does: load it back and generate
        tokenizer = AutoTokenizer.from_pretrained(out)
        loaded = AutoModelForCausalLM.from_pretrained(out).eval()
        inputs = tokenizer(sample_prompt, return_tensors="pt")
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            generated = loaded.generate(
                **inputs, max_new_tokens=64, do_sample=True, temperature=0.6, top_k=40
            )
        sample = tokenizer.decode(generated[0], skip_special_tokens=True)
        log(f"sample:\n{sample}")

        losses = result.pop("losses")
        record = {
            "seed": seed,
            **result,
            "wall_seconds": time.monotonic() - t0,
            "heldout_nll": nll,
            "heldout_perplexity": math.exp(nll),
            "heldout_tokens": counted,
            "unigram_perplexity": math.exp(uni),
            "eval_window": seq_len,
            "parameters": params,
            "vocab_size": tok.get_vocab_size(),
            "train_files": len(train),
            "train_bytes": train_bytes,
            "train_tokens": stream.numel(),
            "heldout_files": [name for name, _ in heldout],
            "sample_prompt": sample_prompt,
            "sample": sample,
            "loss_curve": [round(v, 4) for v in losses[:: max(1, len(losses) // 100)]],
            "args": {
                "minutes": minutes,
                "steps": steps,
                "plan": plan,
                "vocab": vocab,
                "layers": layers,
                "hidden": hidden,
                "heads": heads,
                "kv_heads": kv_heads,
                "intermediate": model.config.intermediate_size,
                "seq_len": seq_len,
                "batch": batch,
                "lr": lr,
                "warmup": warmup,
                "heldout_bytes": heldout_bytes,
                "max_train_bytes": max_train_bytes,
                "eval_cap": eval_cap,
                "threads": threads,
                "bf16": bf16,
            },
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "tokenizers": __import__("tokenizers").__version__,
            },
        }
        (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        log(f"wrote {out} in {record['wall_seconds']:.0f} s")
        return out
    finally:
        torch.set_num_threads(threads_before)


def cached_build(cache_dir: Path | str, **kwargs) -> Path:
    """:func:`build` once per version of this script, Python (its standard library is the
    data) and arguments: the directory lives under ``cache_dir`` keyed by their sha256."""
    key_src = {
        "script": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "python": sys.version.split()[0],
        "kwargs": {k: v for k, v in sorted(kwargs.items()) if k != "log"},
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()
    cache = Path(cache_dir)
    target = cache / f"tinylm-{key[:16]}"
    if (target / "training.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tinylm-", dir=cache))
    try:
        build(tmp, **kwargs)
        for path in [tmp, *tmp.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.replace(tmp, target)
        except OSError:  # another process got there first
            if not (target / "training.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--minutes", type=float, default=12.0, help="budget of the whole run")
    parser.add_argument("--steps", type=int, default=None, help="exactly this many steps")
    parser.add_argument(
        "--plan",
        type=json.loads,
        default=None,
        help="with --steps: replay a timed run, the JSON 'plan' of its training.json",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=None, help="default ~2.7x hidden")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--heldout-bytes", type=int, default=256_000)
    parser.add_argument("--max-train-bytes", type=int, default=None)
    parser.add_argument("--eval-cap", type=int, default=32_768, help="held-out tokens scored")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for the training forward (default: where the CPU has native bf16)",
    )
    args = parser.parse_args(argv)
    kwargs = vars(args)
    out = kwargs.pop("out")
    from transformers.utils import logging

    logging.disable_progress_bar()
    build(out, log=lambda msg: print(msg, flush=True), **kwargs)


if __name__ == "__main__":
    main()
