"""``Pass``, its ``Config`` and ``PassResult``: the contract every pass implements.

A pass is a class with a dotted, namespaced ``name`` (``prune.structured``), a pydantic
``Config`` that refuses unknown keys, and ``run(ir, ctx) -> PassResult``. It is registered
through the ``fxopt_register_passes`` hook, built-in or third-party alike::

    class ScaleWeights(Pass):
        name = "example.scale"

        class Config(PassConfig):
            factor: float = 1.0

        def run(self, ir, ctx):
            for p in ir.module.parameters():
                p.data.mul_(self.config.factor)
            return PassResult(ir, modified=self.config.factor != 1.0, preserved=ALL)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict

from .config import NumbersNotBooleans
from .errors import DataError

if TYPE_CHECKING:
    import torch

    from fxopt.run.recipe import Recipe

    from .console import Output
    from .data import Batch
    from .ir import ModelIR
    from .plugin_host import PluginHost


class PassConfig(NumbersNotBooleans):
    """Base of every pass's ``Config``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) IR, whether it changed, what stays valid."""

    ir: ModelIR
    modified: bool
    preserved: frozenset[str] | set[str] = frozenset()
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass may use besides the IR. Kept deliberately small.

    ``batches(split)`` yields the recipe's data for ``calibration`` or ``finetune``;
    ``reference`` runs the original, unoptimized model (for distillation); ``evaluate``
    measures an IR against the reference on the verification inputs (for accuracy-aware
    passes); ``cache_dir`` is where a pass may keep results across runs, ``None`` when the
    run may neither read nor write a cache (``--no-cache``): a pass must then keep nothing.
    ``plugins`` is the run's plugin host (registries and hooks, e.g. attacks for
    ``finetune``); ``resume`` is ``optimize --resume``'s value (a checkpoint path, or
    ``"latest"``). ``reference_module`` is the original model itself, for passes that read
    its intermediate states (``finetune``'s hidden-state distillation); never modify it.
    """

    recipe: Recipe
    batches: Callable[[str], list[Batch]]
    reference: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]]
    evaluate: Callable[[ModelIR], dict[str, float]]
    cache_dir: Path | None
    output: Output
    plugins: PluginHost = field(default_factory=lambda: _installed_plugins())
    resume: str | None = None
    reference_module: torch.nn.Module | None = None
    #: this pass's position in the recipe's ``[[passes]]`` (set by the pass manager): what
    #: its errors name (``passes[2].config``) and what tells two identical passes apart
    index: int = 0
    #: where :meth:`warn` records (the pass manager gives each pass its own list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Tell the user now, and record it in the report under this pass's ``warnings``."""
        self.warnings.append(message)
        self.output.warn(message)

    def required_batches(self, split: str, needed_by: str, alternative: str = "") -> list[Batch]:
        """The split's batches; none is a :class:`DataError` naming ``data.<split>``, what
        needed it and the fix, worded the same for every pass (``alternative``: another way
        out, e.g. "or use criterion = 'l2'")."""
        batches = self.batches(split)
        if not batches:
            raise DataError(
                f"{needed_by} needs the {split} set, and it is empty",
                file=self.recipe.label,
                field=f"data.{split}",
                fix=f"add a [data.{split}] table with at least batch_size samples"
                + (f", {alternative}" if alternative else ""),
            )
        return batches


def _installed_plugins() -> PluginHost:
    """The host of every installed plugin, for a context built outside a run (tests, tools)."""
    from .plugin_host import load_plugins

    return load_plugins()


class Pass:
    """Base class of all passes. Subclasses set ``name``, ``Config`` and ``run``."""

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    #: the data splits this pass reads, checked before the run starts; a pass whose needs
    #: depend on its config makes this a property
    needs_data: tuple[str, ...] = ()
    #: True for passes that often find nothing to do (the cleanups); for the others the pass
    #: manager warns when a run of them changed nothing
    may_change_nothing: ClassVar[bool] = False
    #: whether this pass may write into the storage of a weight of the IR (``p.data.mul_``,
    #: an optimizer step). When no pass of a recipe may, the run's IR shares its weights with
    #: the original model, the reference it is verified against (a model's weights held once,
    #: not twice); otherwise the IR gets its own copy at capture. Passes that only replace
    #: weights with new tensors, or rebind ``p.data``, set it to False.
    edits_weights_in_place: ClassVar[bool] = True
    #: whether this pass can bring a model that misses the fidelity budget back within it
    #: (a fine-tune does; a pruner or a quantizer only moves it further away). ``optimize
    #: search`` drops a candidate once a pass misses the budget and no later pass recovers.
    recovers: ClassVar[bool] = False
    #: whether the pass's result may depend on the recipe's ``[target]`` (it reads
    #: ``ctx.recipe.target``: the half-precision casts refuse a dtype the backend cannot
    #: run). The pass cache keys the result of such a pass, and of every pass after it, on
    #: the target; the others are shared across lowerings, so a search over the backend
    #: distils once. True unless a pass says otherwise: a plugin's pass that reads the target
    #: is never handed a result computed for another.
    reads_target: ClassVar[bool] = True

    def __init__(self, config: PassConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def run(self, ir: ModelIR, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def data_reason(self, split: str) -> str:
        """Why this configured pass reads ``split`` (said when the recipe lacks it)."""
        return ""

    def __repr__(self) -> str:
        return f"<pass {self.name} {self.config.model_dump()}>"
