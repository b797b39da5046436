"""Token-by-token generation over any runner of a causal LM with a KV cache.

The same loop serves ``optimize generate``, the ``causal-lm`` task's generation agreement
(the original model and the artifact, each through its runner) and the benchmarks: one
prefill of the prompt with an empty cache, then one call per new token that feeds the
``present.*`` outputs back as ``past_key_values.*`` (the names of :mod:`.causal_lm`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fxopt.engine.backend import Runner

PAST = "past_key_values."


@dataclass
class Generated:
    tokens: list[int]
    #: seconds of the prompt's pass, and of all later steps together
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    steps: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_second(self) -> float:
        """New tokens after the first, per second of decoding (the first comes from the
        prefill)."""
        later = len(self.tokens) - 1
        return later / self.decode_seconds if later > 0 and self.decode_seconds > 0 else 0.0


class Generator:
    """Greedy (or seeded sampling) generation, one sequence at a time.

    ``cache_shape`` is one cache tensor's shape without batch and length:
    ``(kv_heads, head_dim)``; the cache starts empty.
    """

    def __init__(self, runner: Runner, cache_shape: tuple[int, int]) -> None:
        self.runner = runner
        self.cache_names = [n for n in runner.input_names if n.startswith(PAST)]
        if not self.cache_names:
            raise ValueError("the runner takes no past_key_values.*: it has no KV cache")
        self.cache_shape = cache_shape

    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        *,
        eos_token_id: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int = 0,
        on_token: Callable[[int], None] | None = None,
    ) -> Generated:
        """New tokens after ``prompt``: the most likely each time (``temperature`` 0), else
        drawn from the softmax at that temperature (the ``top_k`` most likely, if set)."""
        rng = np.random.default_rng(seed)
        kv, dim = self.cache_shape
        cache = {name: np.zeros((1, kv, 0, dim), np.float32) for name in self.cache_names}
        ids = np.asarray([prompt], dtype=np.int64)
        length = 0
        out = Generated([])
        for _ in range(max_new_tokens):
            start = time.perf_counter()
            new = ids.shape[1]
            feeds = {
                "input_ids": ids,
                "attention_mask": np.ones((1, length + new), np.int64),
                "position_ids": np.arange(length, length + new, dtype=np.int64)[None],
                **cache,
            }
            logits, *present = self.runner.run(feeds)
            token = _choose(logits[0, -1], temperature, top_k, rng)
            elapsed = time.perf_counter() - start
            if length == 0:
                out.prefill_seconds = elapsed
            else:
                out.decode_seconds += elapsed
            out.steps.append(elapsed)
            cache = dict(zip(self.cache_names, present, strict=True))
            length += new
            out.tokens.append(token)
            if on_token is not None:
                on_token(token)
            if token == eos_token_id:
                break
            ids = np.asarray([[token]], dtype=np.int64)
        return out


def _choose(logits: np.ndarray, temperature: float, top_k: int, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    if top_k > 0:
        cut = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cut, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))
