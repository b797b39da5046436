"""The hooks ``quantize.int8`` owns: activation observers (calibrators) by name.

Added to the plugin host by :func:`fxopt.passes.quantize.observers.fxopt_add_hookspecs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fxopt.engine.hookspecs import hookspec

if TYPE_CHECKING:
    from fxopt.engine.registry import Registrar

    from .observers import ObserverFactory


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
