"""Built-in passes, registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from fxopt.engine import hookimpl

from .cast import CastBF16, CastFP16
from .constant_fold import ConstantFold
from .dce import DeadCodeElimination
from .dropout import RemoveDropout
from .finetune import Finetune
from .prune.structured import StructuredPrune
from .quantize import QuantizeInt8, QuantizeWeightOnly, SmoothQuant

BUILTIN_PASSES = (
    DeadCodeElimination,
    ConstantFold,
    RemoveDropout,
    Finetune,
    CastFP16,
    CastBF16,
    StructuredPrune,
    SmoothQuant,
    QuantizeInt8,
    QuantizeWeightOnly,
)


@hookimpl
def fxopt_register_passes(registry) -> None:
    for pass_class in BUILTIN_PASSES:
        registry.register(pass_class.name, pass_class)
