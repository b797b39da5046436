"""``cast.fp16`` / ``cast.bf16``: half precision with float32 islands and explicit casts.

``policy`` decides each op's precision, ``rewrite`` inserts the casts, ``overflow`` finds ops
that overflow on real data, ``support`` refuses dtypes the target cannot run.
"""

from .half_pass import CastBF16, CastConfig, CastFP16, HalfPrecisionCast

__all__ = ["CastBF16", "CastConfig", "CastFP16", "HalfPrecisionCast"]
