"""Accuracy-aware mode: the fewest float layers that meet the budget, or a clear failure."""

from __future__ import annotations

import pytest

from fxopt.engine.errors import BudgetError
from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.run.recipe import VerifySection
from tests.passes.quantize_support import Planted, context, count_ops, make_ir

CONFIG = {"observer": "minmax", "accuracy_aware": True}


def test_planted_outlier_layer_is_the_one_kept_float(tmp_path):
    ir = make_ir(Planted())
    ctx = context(ir, tmp_path, verify=VerifySection(min_cosine=0.9999, min_cosine_worst=0.999))
    everything = make_ir(Planted())
    QuantizeInt8(Int8Config(observer="minmax")).run(everything, context(everything, tmp_path))
    assert ctx.evaluate(everything)["cosine_mean"] < 0.9999  # all quantized misses the budget

    result = QuantizeInt8(Int8Config(**CONFIG)).run(ir, ctx)
    float_layers = result.metrics["float_layers"]
    assert list(float_layers) == ["fc2"]
    # what fc2 would have cost, quantized alone: far more than the budget allows
    assert float_layers["fc2"]["cosine_mean_drop"] > 1e-4
    assert result.metrics["quantized"] == 3
    assert count_ops(ir, "quantized_decomposed.dequantize_per_channel") == 3
    assert ctx.evaluate(ir)["cosine_mean"] >= 0.9999


def test_budget_already_met_keeps_everything_quantized(tmp_path):
    ir = make_ir(Planted())
    ctx = context(ir, tmp_path, verify=VerifySection(min_cosine=0.5))
    result = QuantizeInt8(Int8Config(**CONFIG)).run(ir, ctx)
    assert result.metrics["float_layers"] == {} and result.metrics["quantized"] == 4


def test_budget_no_selection_meets_names_the_best_figure(tmp_path):
    ir = make_ir(Planted())
    ctx = context(ir, tmp_path, verify=VerifySection(min_cosine=1.0))
    with pytest.raises(BudgetError) as info:
        QuantizeInt8(Int8Config(**CONFIG)).run(ir, ctx)
    text = str(info.value)
    assert "cannot meet the budget" in text and "(3 of 4 layers in float)" in text
    assert "cosine_mean = 0.99" in text and "(min_cosine 1.0)" in text
    assert info.value.exit_code != 0


def test_max_float_layers_limits_the_selection(tmp_path):
    impossible = make_ir(Planted())
    with pytest.raises(BudgetError, match=r"\(1 of 4 layers in float\)"):
        QuantizeInt8(Int8Config(**CONFIG, max_float_layers=1)).run(
            impossible, context(impossible, tmp_path, verify=VerifySection(min_cosine=1.0))
        )
    ir = make_ir(Planted())
    verify = VerifySection(min_cosine=0.9999, min_cosine_worst=0.999)
    result = QuantizeInt8(Int8Config(**CONFIG, max_float_layers=1)).run(
        ir, context(ir, tmp_path, verify=verify)
    )
    assert list(result.metrics["float_layers"]) == ["fc2"]
