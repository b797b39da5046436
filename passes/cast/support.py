"""Can the recipe's target run this half-precision dtype? Asked before any graph is rewritten.

bfloat16 is the one that bites: ONNX Runtime's CPU provider has no bf16 kernels (a session
fails with "Could not find an implementation for Add"), CUDA GPUs before Ampere have no bf16
units, and TensorRT builds bf16 only from compute capability 8.0. fp16 runs everywhere we
lower to (ONNX Runtime's CPU provider computes unsupported fp16 ops in fp32 behind inserted
casts, which is slow but exact to the graph's rounding).
"""

from __future__ import annotations

import torch

from fxopt.engine.errors import BackendUnavailableError
from fxopt.run.recipe import Recipe

#: TensorRT builds bf16 layers on Ampere (sm_80) and newer
BF16_MIN_CAPABILITY = (8, 0)


def check_dtype_supported(dtype: torch.dtype, recipe: Recipe, pass_name: str) -> None:
    """Raise when the recipe's backend cannot execute ``dtype`` on this machine."""
    if dtype != torch.bfloat16:
        return
    target = recipe.target
    options = target.options
    if target.backend == "onnxruntime":
        providers = options.get("providers", ["CPUExecutionProvider"])
        if not any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in providers):
            raise _unsupported(
                recipe,
                f"{pass_name}: ONNX Runtime's CPU execution provider has no bfloat16 kernels",
                "use cast.fp16, or target.backend = 'torch' (bf16 runs on CPU in torch), or "
                "a CUDA execution provider",
            )
    elif target.backend == "torch" and options.get("device") == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise _unsupported(
                recipe,
                f"{pass_name}: this GPU ({torch.cuda.get_device_name()}) does not support bfloat16",
                "use cast.fp16 on this GPU, or run on an Ampere (sm_80) or newer GPU",
            )
    elif target.backend == "tensorrt" and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
        if capability < BF16_MIN_CAPABILITY:
            raise _unsupported(
                recipe,
                f"{pass_name}: TensorRT builds bfloat16 only on compute capability 8.0+, "
                f"this GPU is {capability[0]}.{capability[1]}",
                "use cast.fp16 on this GPU",
            )


def _unsupported(recipe: Recipe, message: str, fix: str) -> BackendUnavailableError:
    return BackendUnavailableError(message, file=recipe.label, field="target.backend", fix=fix)
