"""What the stages of a run hand each other, in one place."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fxopt.engine.backend import Artifact, Runner
    from fxopt.engine.console import Output
    from fxopt.engine.data import Batch
    from fxopt.engine.instruments import PassRecord
    from fxopt.engine.ir import ModelIR
    from fxopt.engine.loading import LoadedModel
    from fxopt.engine.plugin_host import PluginHost
    from fxopt.engine.task import Task
    from fxopt.store.staging import StagedDir

    from .bind import Plan
    from .options import RunOptions
    from .pass_cache import PassCache
    from .recipe import Recipe
    from .verify import SetVerdict


@dataclass
class RunState:
    """One run: its inputs, then each stage's product, filled in stage order.

    A stage reads only what the stages before it filled in, so the executor's list of stages
    is the whole story of a run; nothing else passes state between them.
    """

    recipe: Recipe
    plan: Plan
    host: PluginHost
    model_path: Path
    options: RunOptions
    output: Output
    #: the cache passes may use (calibration, checkpoints); ``None``: no cache at all
    cache_dir: Path | None = None
    pass_cache: PassCache | None = None
    build_key: str = ""
    #: where the output is staged; ``None`` for a run that writes nothing (a torchrun peer,
    #: ``optimize check``)
    staged: StagedDir | None = None
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)
    # load
    loaded: LoadedModel | None = None
    splits: dict[str, list[Batch]] = field(default_factory=dict)
    # reference
    task: Task | None = None
    #: the original model's outputs on each verification set, by its key in ``splits``
    references: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)
    # capture, passes
    ir: ModelIR | None = None
    records: list[PassRecord] = field(default_factory=list)
    # lower
    artifact: Artifact | None = None
    runner: Runner | None = None
    # verify
    #: each verification set's figures and budget, by name, the primary set first
    sets: dict[str, SetVerdict] = field(default_factory=dict)
    latency: dict[str, Any] | None = None

    @property
    def reference(self) -> list[list[np.ndarray]]:
        """The original model's outputs on the primary verification set."""
        return self.references["verification"]

    @property
    def passed(self) -> bool:
        """The budget held on every verification set."""
        return all(s.passed for s in self.sets.values())

    def masks(self, key: str = "verification") -> list[np.ndarray | None]:
        """The task's mask of each batch of the verification set ``key`` (padding left out of
        the metrics)."""
        return [self.task.mask(b) for b in self.splits[key]]
