"""Activation observers by name, the registry ``quantize.int8``'s ``observer`` key reads.

An observer factory takes :class:`ObserverOptions` (the recipe's observer settings) and
returns a torchao observer constructor (``SomeObserver.with_args(...)``); pt2e's ``prepare``
calls it with the dtype, range and scheme of the quantization spec. Built-ins register here
through ``fxopt_register_observers``, the hook a third party uses for its own::

    @hookimpl
    def fxopt_register_observers(registry):
        registry.register("mycorp.ema", lambda options: EmaObserver.with_args(decay=0.9))

torchao is imported inside the factories, when a recipe actually quantizes: loading plugins
stays fast and quiet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fxopt.engine import hookimpl


@dataclass(frozen=True)
class ObserverOptions:
    """The recipe's settings an observer may read."""

    percentile: float = 99.99


#: ``factory(options) -> observer constructor`` (a torchao ``PartialWrapper`` or a class)
ObserverFactory = Callable[[ObserverOptions], Any]


def minmax(options: ObserverOptions) -> Any:
    """torchao's running min/max: no clipping at all."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    return MinMaxObserver


def histogram(options: ObserverOptions) -> Any:
    """torchao's HistogramObserver (a greedy, asymmetric L2 search)."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    return HistogramObserver


def percentile(options: ObserverOptions) -> Any:
    """Clip ``|x|`` at the recipe's ``percentile``."""
    from .histogram_observers import PercentileObserver

    return PercentileObserver.with_args(percentile=options.percentile)


def entropy(options: ObserverOptions) -> Any:
    """TensorRT's entropy (KL) calibration."""
    from .histogram_observers import EntropyObserver

    return EntropyObserver


def mse(options: ObserverOptions) -> Any:
    """The symmetric range with the least squared quantization error."""
    from .histogram_observers import MSEObserver

    return MSEObserver


BUILTIN_OBSERVERS: dict[str, ObserverFactory] = {
    "minmax": minmax,
    "histogram": histogram,
    "percentile": percentile,
    "entropy": entropy,
    "mse": mse,
}


@hookimpl
def fxopt_register_observers(registry) -> None:
    for name, factory in BUILTIN_OBSERVERS.items():
        registry.register(name, factory)


@hookimpl
def fxopt_add_hookspecs(host) -> None:
    """This package owns its extension point: its hooks, and the ``observers`` registry."""
    from . import hookspecs

    host.add_hookspecs(hookspecs)
    host.add_registry("observers", "observer", "fxopt_register_observers")
