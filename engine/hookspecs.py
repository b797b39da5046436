"""Every hook a plugin can implement, one empty, typed, documented function each.

Plugins are found through the entry-point group ``fxopt.plugins``; each entry point names a
module (or object) carrying ``@hookimpl`` functions. The built-in passes, backends, loaders
and datasets register through these very hooks.

The ``fxopt_register_*`` hooks receive a :class:`~fxopt.engine.registry.Registrar` and call
``registry.register(name, obj)``; the host never merges return values, and it records which
plugin registered what, so a clash names both plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch

    from fxopt.passes.finetune.attacks import Attack
    from fxopt.passes.prune.pruners import LayerPruner
    from fxopt.passes.quantize.observers import ObserverFactory

    from .backend import Backend
    from .data import Dataset
    from .instruments import Instrument
    from .loading import Loader
    from .pass_base import Pass
    from .recipe import Recipe
    from .registry import Registrar

PROJECT = "fxopt"
#: bumped when a hook's signature changes incompatibly; a plugin module may declare the
#: version it was built for as ``FXOPT_HOOKSPEC_VERSION`` and is refused on a mismatch
HOOKSPEC_VERSION = 1
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registration: called once when the plugin host starts -----------------------------------


@hookspec
def fxopt_register_passes(registry: Registrar[type[Pass]]) -> None:
    """Register :class:`~fxopt.engine.Pass` subclasses by their dotted name.

    Example::

        @hookimpl
        def fxopt_register_passes(registry):
            registry.register("mycorp.cluster", ClusterPass)
    """


@hookspec
def fxopt_register_backends(registry: Registrar[type[Backend]]) -> None:
    """Register :class:`~fxopt.engine.backend.Backend` subclasses (``onnxruntime``, ...)."""


@hookspec
def fxopt_register_loaders(registry: Registrar[type[Loader]]) -> None:
    """Register model loaders; the first whose ``can_load(path)`` is true loads the model."""


@hookspec
def fxopt_register_datasets(registry: Registrar[type[Dataset]]) -> None:
    """Register dataset sources a recipe's ``[data.*] source`` can name."""


@hookspec
def fxopt_register_layer_pruners(registry: Registrar[LayerPruner]) -> None:
    """Register per-op layer pruners for ``prune.structured``, keyed by the op's name as the
    graph prints it (``aten.linear.default``) or its overload packet (``aten.add``).

    A :class:`~fxopt.passes.prune.LayerPruner` says how the op's axes are coupled; ops with
    none are left unpruned and listed in the report. Example::

        @hookimpl
        def fxopt_register_layer_pruners(registry):
            registry.register("mylib.gelu_linear.default", GeluLinearPruner())
    """


@hookspec
def fxopt_register_observers(registry: Registrar[ObserverFactory]) -> None:
    """Register activation observers for ``quantize.int8`` by the name its ``observer`` key
    (or ``observer_overrides``) uses; ``minmax``, ``histogram``, ``percentile``, ``entropy``
    and ``mse`` are built in.

    The registered object is a factory: called with the recipe's
    :class:`~fxopt.passes.quantize.ObserverOptions`, it returns a torchao observer constructor
    (a class, or ``SomeObserver.with_args(...)``), which pt2e calls with the dtype, range and
    scheme of the quantization spec. Example::

        @hookimpl
        def fxopt_register_observers(registry):
            registry.register("mycorp.ema", lambda options: EmaObserver.with_args(decay=0.9))
    """


# -- per run ----------------------------------------------------------------------------------


@hookspec
def fxopt_add_instruments(recipe: Recipe) -> list[Instrument] | None:
    """Return extra pass-manager instruments for this run (called once per run).

    Each result is a list of :class:`~fxopt.engine.instruments.Instrument`; all lists are
    concatenated in plugin order.
    """


# -- training: the ``finetune`` pass's loop ---------------------------------------------------


@hookspec
def fxopt_register_attacks(registry: Registrar[type[Attack]]) -> None:
    """Register adversarial attacks (:class:`fxopt.passes.finetune.Attack` subclasses) by the
    name a recipe's ``adversarial.method`` uses (``fgsm``, ``pgd``, ``freelb`` are built in).

    Example::

        @hookimpl
        def fxopt_register_attacks(registry):
            registry.register("mycorp.noise", NoiseAttack)
    """


@hookspec(firstresult=True)
def fxopt_adversarial_perturb(
    attack: str,
    target: str,
    step: int,
    iteration: int,
    delta: torch.Tensor,
    inputs: dict[str, torch.Tensor],
) -> torch.Tensor | None:
    """Refine a perturbation after each attack iteration of training step ``step``.

    ``target`` is ``"pixels"`` or ``"embeddings"``; ``inputs`` is the clean batch (to mask
    padding tokens, say). Return a tensor of ``delta``'s shape to replace it, or ``None`` to
    keep it; the result is projected back into the recipe's epsilon ball either way.
    ``firstresult``: the first plugin that returns a tensor wins.
    """


@hookspec
def fxopt_train_step_begin(
    step: int, epoch: int, batch: dict[str, torch.Tensor], model: torch.nn.Module
) -> None:
    """Called before each optimizer step of ``finetune`` with this rank's batch (on device)."""


@hookspec
def fxopt_train_step_end(
    step: int, epoch: int, loss: float, lr: float, model: torch.nn.Module
) -> bool | None:
    """Called after each optimizer step. Return ``True`` to stop training after this step
    (a custom early-stopping rule); under ``torchrun`` rank 0's answer counts.
    """
