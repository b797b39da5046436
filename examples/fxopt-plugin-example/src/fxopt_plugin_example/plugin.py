"""The hooks fxopt calls; each registers one object under a namespaced name."""

from __future__ import annotations

from fxopt.engine import hookimpl

from .magnitude import MagnitudeThreshold
from .margin_observer import absmax_margin
from .noise_attack import UniformNoise

FXOPT_HOOKSPEC_VERSION = 1


@hookimpl
def fxopt_register_passes(registry):
    registry.register(MagnitudeThreshold.name, MagnitudeThreshold)


@hookimpl
def fxopt_register_attacks(registry):
    registry.register(UniformNoise.name, UniformNoise)


@hookimpl
def fxopt_register_observers(registry):
    registry.register("example.absmax_margin", absmax_margin)
