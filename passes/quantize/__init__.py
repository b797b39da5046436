"""``quantize.int8`` and ``quantize.smoothquant``: calibrated int8 as explicit Q/DQ.

``quantizer`` decides which ops get Q/DQ and in which form, ``observers`` names the
activation calibrators (``histogram_observers`` and ``thresholds`` hold the ones torchao
lacks), ``calibrate`` feeds the data, ``outliers`` and ``smoothquant`` rewrite the graph
so per-tensor int8 fits BERT-family activations, ``sensitivity`` is the accuracy-aware
choice of float layers and ``cache`` the calibration cache. torchao is imported only when a
pass runs; the ``quantized_decomposed`` op library (a few ms) is registered on import, so a
graph holding Q/DQ (a ``.pt2``, a pass-cache entry) loads in any process that loaded fxopt.
"""

import torch.ao.quantization.fx._decomposed  # noqa: F401

from .config import Int8Config, SmoothQuantConfig
from .int8_pass import QuantizeInt8
from .observers import ObserverFactory, ObserverOptions
from .smoothquant import SmoothQuant

__all__ = [
    "Int8Config",
    "ObserverFactory",
    "ObserverOptions",
    "QuantizeInt8",
    "SmoothQuant",
    "SmoothQuantConfig",
]
