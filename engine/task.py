"""Tasks: what a model is for, and so how its optimized artifact is judged.

A task owns which output verification compares and how (the per-sample vectors whose cosine
is reported, the mask that goes with them), the metrics beyond the common ones (top-1
agreement for a classifier), and the eager runner of the original model that every artifact
is compared against. Tasks are registered like passes and backends
(``fxopt_register_tasks``), under the name a loader gives ``LoadedModel.task`` and a recipe's
``[model] task`` may set, so a new kind of model (a language model with a KV cache, say)
brings its own verification without editing the engine.

The base class is the ``generic`` task: every output flattened, compared sample by sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .backend import Runner

if TYPE_CHECKING:
    import torch

    from fxopt.run.recipe import VerifySection

    from .data import Batch
    from .loading import LoadedModel


@dataclass
class Evidence:
    """What a task may judge an artifact on (:meth:`Task.judge`): the verification batches,
    both sides' outputs on them, and both sides' runners, to run them again their own way
    (a language model generates token by token with its cache)."""

    batches: list[Batch]
    reference: list[list[np.ndarray]]
    candidate: list[list[np.ndarray]]
    reference_runner: Runner
    candidate_runner: Runner
    settings: VerifySection
    #: the batches as the candidate takes them (its own cache sizes, see
    #: :func:`~fxopt.engine.specs.conform`); the reference's when unset
    candidate_batches: list[Batch] | None = None


class Task:
    """The ``generic`` task; subclasses override what their kind of model needs."""

    name: ClassVar[str] = "generic"
    #: a classifier: ``top1_agreement`` of the first output's argmax is reported (and can be
    #: bounded by ``[verify] min_top1_agreement``)
    classifies: ClassVar[bool] = False
    #: how many leading outputs are compared (``None``: all): state a model hands back to
    #: itself (a language model's KV cache) is judged through what it produces instead
    compared_outputs: ClassVar[int | None] = None

    def mask(self, batch: Batch) -> np.ndarray | None:
        """Which positions of a batch are real (not padding), for :meth:`vectors`."""
        return batch["attention_mask"].numpy() if "attention_mask" in batch else None

    def vectors(self, output: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The per-sample vectors of the first output whose cosine is reported."""
        return output.reshape(output.shape[0], -1)

    def extra_metrics(
        self, reference: list[np.ndarray], candidate: list[np.ndarray]
    ) -> dict[str, float]:
        """Metrics beyond cosine, max abs and relative L2 (all outputs, all samples)."""
        if not self.classifies:
            return {}
        agree = reference[0].argmax(axis=-1) == candidate[0].argmax(axis=-1)
        return {"top1_agreement": float(agree.mean())}

    def judge(self, evidence: Evidence) -> dict[str, float]:
        """Metrics only this kind of model has (perplexity, generation agreement); the
        verify stage adds them to the common ones, and ``[verify]`` may bound them."""
        return {}

    def reference_runner(self, loaded: LoadedModel) -> Runner:
        """Runs the original model eagerly: what every artifact is compared against."""
        return EagerRunner(loaded.module, [s.name for s in loaded.inputs])


class EagerRunner(Runner):
    """A module run eagerly on the CPU, numpy in and out, without gradients."""

    def __init__(self, module: torch.nn.Module, input_names: list[str]) -> None:
        self.module = module
        self.input_names = list(input_names)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with torch.no_grad():
            out = self.module(*args)
        outs: Any = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]
