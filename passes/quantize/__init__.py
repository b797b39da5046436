"""``quantize.int8`` and ``quantize.smoothquant``: calibrated int8 as explicit Q/DQ;
``quantize.weight_only``: 4/8-bit block-wise weights (round to nearest or GPTQ).

``quantizer`` decides which ops get Q/DQ and in which form, ``observers`` names the
activation calibrators (``histogram_observers`` and ``thresholds`` hold the ones torchao
lacks), ``calibrate`` feeds the data, ``outliers`` and ``smoothquant`` rewrite the graph
so per-tensor int8 fits BERT-family activations, ``sensitivity`` is the accuracy-aware
choice of float layers and ``cache`` the calibration cache. torchao is imported only when a
pass runs; the ``quantized_decomposed`` op library (a few ms) is registered on import, so a
graph holding Q/DQ (a ``.pt2``, a pass-cache entry) loads in any process that loaded fxopt.

``weight_only`` writes ``fxopt::matmul_nbits`` (``nbits``: the packed layout and the op,
registered on import for the same reason), quantized by ``gptq`` over ``sequential``'s
layer-by-layer calibration run; ``nbits_onnx`` gives the ONNX export its translation to ONNX
Runtime's ``MatMulNBits`` (onnxscript imported only when a graph is exported).
"""

import torch.ao.quantization.fx._decomposed  # noqa: F401

from . import nbits_onnx
from .config import Int8Config, SmoothQuantConfig
from .int8_pass import QuantizeInt8
from .observers import ObserverFactory, ObserverOptions
from .smoothquant import SmoothQuant
from .weight_only import QuantizeWeightOnly, WeightOnlyConfig

nbits_onnx.register()

__all__ = [
    "Int8Config",
    "ObserverFactory",
    "ObserverOptions",
    "QuantizeInt8",
    "QuantizeWeightOnly",
    "SmoothQuant",
    "SmoothQuantConfig",
    "WeightOnlyConfig",
]
