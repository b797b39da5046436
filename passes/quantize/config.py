"""The recipe keys of ``quantize.int8`` and ``quantize.smoothquant``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fxopt.engine.pass_base import PassConfig

OpKind = Literal["linear", "conv2d", "matmul"]


class Int8Config(PassConfig):
    activations: Literal["int8_sym", "uint8"] = Field(
        default="int8_sym",
        description="int8_sym: [-127, 127], zero point 0 (TensorRT's form); uint8: [0, 255] "
        "affine (one more bit for one-sided inputs such as GELU outputs)",
    )
    observer: str = Field(
        default="percentile",
        description="activation observer: minmax, histogram, percentile, entropy, mse, or one "
        "a plugin registers",
    )
    percentile: float = Field(default=99.99, gt=0, le=100, description="for observer percentile")
    observer_overrides: dict[str, str] = Field(
        default_factory=dict, description="module-name pattern -> observer, for those ops"
    )
    ops: list[OpKind] = Field(default_factory=lambda: ["linear"], min_length=1)
    skip: list[str] = Field(
        default_factory=list, description="fnmatch patterns of module names kept in float"
    )
    trim_padding: bool = Field(
        default=True, description="calibrate text on real tokens only (needs attention_mask)"
    )
    outlier_split: bool = Field(
        default=False, description="run a linear's few outlier input channels in float32"
    )
    outlier_mode: Literal["float", "duplicate"] = Field(
        default="float",
        description="float: outlier channels bypass int8 (a small float32 matmul); duplicate: "
        "each becomes a few scaled-down copies inside the int8 GEMM",
    )
    outlier_threshold: float = Field(
        default=6.0, gt=1, description="outlier: max |x| above this x the median channel's"
    )
    outlier_max_channels: int = Field(default=4, ge=1, description="per linear")
    outlier_layers: list[str] = Field(
        default_factory=lambda: ["*"], description="module-name patterns the split may touch"
    )
    accuracy_aware: bool = Field(
        default=False,
        description="keep in float the fewest layers needed to meet [verify] (costs one "
        "evaluation per quantized layer)",
    )
    max_float_layers: int | None = Field(
        default=None, ge=1, description="accuracy-aware: most layers it may leave in float"
    )
    cache: bool = Field(default=True, description="reuse calibration results across runs")

    @field_validator("ops")
    @classmethod
    def _unique(cls, ops: list[str]) -> list[str]:
        return list(dict.fromkeys(ops))


class SmoothQuantConfig(PassConfig):
    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="migration strength: 0 leaves activations, 1 moves all range to weights",
    )
    layers: list[str] = Field(
        default_factory=lambda: ["*"], description="module-name patterns of linears to smooth"
    )
    trim_padding: bool = True
