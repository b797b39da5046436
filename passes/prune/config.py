"""The ``prune.structured`` recipe keys.

Example::

    [[passes]]
    name = "prune.structured"
    [passes.config]
    ffn = 0.3                 # remove 30% of the FFN neurons of every layer
    heads = 0.25              # and 25% of the attention heads
    kv_heads = 0.5            # grouped-query attention: half the key/value groups
    criterion = "taylor"      # l1 | l2 | taylor (needs [data.calibration])
    reconstruct = true        # least-squares refit of the layers reading pruned channels
    round_to = 8              # kept channels a multiple of 8
    ignore = ["*.layer.0.*"]  # leave these groups whole
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fxopt.engine.pass_base import PassConfig

from .group import KINDS

_RATIO = (
    "share of the units removed from every {} group, in [0, 1); 0 leaves them alone (over "
    "`ratio`, or as one value of a search space)"
)
#: kinds `ratio` does not imply: a hidden width changes normalization statistics, and a
#: key/value head takes a whole group of query heads with it
EXPLICIT_ONLY = ("hidden", "kv_heads")


class PruneConfig(PassConfig):
    ratio: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="share removed from every ffn, heads and conv group (the per-kind keys "
        "override it); hidden widths are pruned only when `hidden` is set",
    )
    ffn: float | None = Field(default=None, ge=0, lt=1, description=_RATIO.format("FFN-neuron"))
    heads: float | None = Field(
        default=None, ge=0, lt=1, description=_RATIO.format("attention-head")
    )
    kv_heads: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="grouped-query attention: share of the key/value heads removed, each "
        "with the query heads that share it (whole groups; `heads` removes query heads "
        "evenly within every group); never implied by `ratio`",
    )
    conv: float | None = Field(default=None, ge=0, lt=1, description=_RATIO.format("conv-channel"))
    hidden: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="share of a hidden width (residual stream, spanned by LayerNorm or an "
        "embedding) removed; changes normalization statistics, so never implied by `ratio`",
    )
    criterion: Literal["l1", "l2", "taylor", "activation"] = Field(
        default="l2",
        description="l1 / l2 weight magnitude, taylor (weight x gradient on the calibration "
        "set), or activation (how far the layers reading a unit move their outputs when it "
        "is removed, on the calibration set)",
    )
    reconstruct: bool = Field(
        default=False,
        description="refit the Linear layers that read pruned channels by least squares on "
        "the calibration data, so they reproduce their unpruned outputs (needs "
        "[data.calibration])",
    )
    round_to: int = Field(
        default=1, ge=1, description="kept channels per group a multiple of this (8, 16)"
    )
    scope: Literal["layer", "global"] = Field(
        default="layer",
        description="layer: every group loses the ratio; global: units ranked across all "
        "groups of a kind, so sizes differ per layer",
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of groups, modules or parameters never pruned",
    )

    @model_validator(mode="after")
    def _some_ratio(self) -> PruneConfig:
        if not self.ratios():
            raise ValueError(
                "no ratio given: set `ratio`, or one of " + ", ".join(f"`{k}`" for k in KINDS)
            )
        return self

    def ratios(self) -> dict[str, float]:
        """The ratio of each kind of group that is pruned (a kind set to 0 is not)."""
        out = {}
        for kind in KINDS:
            value = getattr(self, kind)
            if value is None and kind not in EXPLICIT_ONLY:
                value = self.ratio
            if value:
                out[kind] = value
        return out
