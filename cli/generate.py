"""``optimize generate OUT_DIR --prompt TEXT``: a causal LM output generates, streamed.

The artifact runs through its backend's runner and the cache loop of
:class:`~fxopt.plugins.huggingface.generation.Generator`, the loop verification and the
benchmarks use; the tokenizer is the one the output ships.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fxopt.engine.console import Output
from fxopt.engine.errors import OutputError
from fxopt.engine.plugin_host import load_plugins
from fxopt.plugins.huggingface.generation import PAST, Generator
from fxopt.run import library_log
from fxopt.run.output_dir import load_output, read_report


def generate_text(
    out_dir: Path,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    stream: bool = True,
    output: Output | None = None,
) -> dict[str, Any]:
    """Generate after ``prompt`` with the output's artifact; returns the text and timings."""
    output = output or Output(quiet=True)
    report = read_report(out_dir)
    cache = next((i for i in report.inputs if i.name.startswith(PAST)), None)
    if report.task != "causal-lm" or cache is None:
        raise OutputError(
            f"this output is a {report.task!r} model without a KV cache; generate needs a "
            "causal-lm output",
            file=out_dir / "report.json",
            field="task",
            fix='optimize a decoder language model with [model] task = "causal-lm"',
        )
    tokenizer = _tokenizer(out_dir)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise OutputError("the prompt is empty once tokenized", field="--prompt", fix="give text")
    _check_context(ids, max_new_tokens, report, out_dir)
    library_log.reroute()
    loaded = load_output(out_dir, load_plugins(), output)
    generator = Generator(loaded.runner, (int(cache.shape[1]), int(cache.shape[3])))
    shown = _Stream(tokenizer, ids) if stream else None
    result = generator.generate(
        ids,
        max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        on_token=shown,
    )
    if shown is not None:
        shown.end()
    return {
        "prompt": prompt,
        "text": tokenizer.decode(result.tokens, skip_special_tokens=True),
        "tokens": result.tokens,
        "prefill_ms": round(result.prefill_seconds * 1e3, 3),
        "decode_tokens_per_second": round(result.decode_tokens_per_second, 2),
        "backend": loaded.backend.name,
    }


def _tokenizer(out_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise OutputError(
            f"the output has no usable tokenizer ({type(exc).__name__})",
            file=out_dir,
            fix="optimize a model directory that ships its tokenizer (tokenizer.json)",
        ) from None


def _check_context(ids: list[int], new: int, report, out_dir: Path) -> None:
    """The prompt must fit the sequence axis it was captured for, and the prompt plus the new
    tokens the cache's."""
    sequence, cache = report.dims.get("sequence", {}), report.dims.get("past_sequence", {})
    limit = sequence.get("max")
    if limit is not None and len(ids) > limit:
        raise OutputError(
            f"the prompt is {len(ids)} tokens; the artifact takes at most {limit} at once",
            file=out_dir / "report.json",
            field="dims.sequence.max",
            fix="shorten the prompt, or optimize again with a larger [model.dims.sequence] max",
        )
    room = cache.get("max")
    if room is not None and len(ids) + new - 1 > room:
        raise OutputError(
            f"the prompt ({len(ids)} tokens) and {new} new tokens exceed the cache the "
            f"artifact was captured for ({room} tokens)",
            file=out_dir / "report.json",
            field="dims.past_sequence.max",
            fix="ask for fewer --max-new-tokens, or optimize again with a larger "
            "[model.dims.past_sequence] max",
        )


class _Stream:
    """Prints the text as the tokens come (decoding the whole so far: a token may be half a
    character)."""

    def __init__(self, tokenizer, prompt: list[int]) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = ""
        sys.stdout.write(tokenizer.decode(prompt, skip_special_tokens=True))
        sys.stdout.flush()

    def __call__(self, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.printed) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(self.printed) :])
            sys.stdout.flush()
            self.printed = text

    def end(self) -> None:
        sys.stdout.write("\n")
        sys.stdout.flush()
