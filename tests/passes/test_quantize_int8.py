"""``quantize.int8`` on small graphs: where Q/DQ go, what stays float, and bad configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxopt.engine.errors import DataError, RecipeError
from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.passes.quantize.graph_edit import FLOAT_META, module_name
from tests.passes.quantize_support import (
    Collecting,
    Planted,
    TwoBranch,
    batches,
    context,
    count_ops,
    make_ir,
)

DQ_WEIGHT = "quantized_decomposed.dequantize_per_channel"
Q_ACT = "quantized_decomposed.quantize_per_tensor"


def run(ir, tmp_path, **config):
    ctx = context(ir, tmp_path, output=config.pop("output", None))
    result = QuantizeInt8(Int8Config(**config)).run(ir, ctx)
    ir.graph.lint()
    return result


def test_every_linear_gets_int8_weights_and_shared_input_observers(tmp_path):
    ir = make_ir(TwoBranch())
    result = run(ir, tmp_path)
    assert result.metrics["quantized"] == 3
    assert count_ops(ir, DQ_WEIGHT) == 3
    # a and b read x through one quantize op; out's input has its own
    assert count_ops(ir, Q_ACT) == 2
    # int8_sym: zero point 0, range [-127, 127] on every activation quantize
    quantize = [n for n in ir.graph.nodes if str(n.target).startswith(Q_ACT)]
    assert {(n.args[2], n.args[3], n.args[4]) for n in quantize} == {(0, -127, 127)}


def test_skip_pattern_leaves_that_module_float(tmp_path):
    ir = make_ir(TwoBranch())
    result = run(ir, tmp_path, skip=["out"])
    assert result.metrics["quantized"] == 2 and result.metrics["skipped"] == ["out"]
    fed_by = {
        module_name(n): str(n.args[0].target)
        for n in ir.graph.nodes
        if n.target == torch.ops.aten.linear.default
    }
    assert fed_by["a"] == fed_by["b"] == "quantized_decomposed.dequantize_per_tensor.default"
    assert fed_by["out"] == "aten.add.Tensor"
    assert count_ops(ir, DQ_WEIGHT) == 2


def test_uint8_activations_are_affine(tmp_path):
    ir = make_ir(TwoBranch())
    run(ir, tmp_path, activations="uint8", observer="minmax")
    quantize = [n for n in ir.graph.nodes if str(n.target).startswith(Q_ACT)]
    assert {(n.args[3], n.args[4], n.args[5]) for n in quantize} == {(0, 255, torch.uint8)}


def test_quantized_graph_stays_close_to_float(tmp_path):
    ir = make_ir(TwoBranch())
    x = batches()[0]["x"]
    with torch.no_grad():
        before = ir.module(x)[0]
    run(ir, tmp_path, observer="minmax")
    with torch.no_grad():
        after = ir.module(x)[0]
    assert torch.nn.functional.cosine_similarity(before, after, dim=1).min() > 0.999


def test_skip_pattern_matching_nothing_names_the_candidates(tmp_path):
    ir = make_ir(TwoBranch())
    with pytest.raises(RecipeError) as info:
        run(ir, tmp_path, skip=["*.output.dense"])
    text = str(info.value)
    assert "config.skip" in text and "'*.output.dense'" in text and "a, b, out" in text


def test_unknown_observer_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="unknown observer 'entropi'; did you mean 'entropy'"):
        run(make_ir(TwoBranch()), tmp_path, observer="entropi")


class ComputedWeight(nn.Module):
    """``lin``'s weight is computed in the graph (x2), so it has no int8 constant to become."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        return (nn.functional.linear(self.fc(x), self.w * 2.0),)


def test_op_it_cannot_annotate_is_warned_and_listed(tmp_path):
    output = Collecting()
    ir = make_ir(ComputedWeight())
    result = run(ir, tmp_path, output=output)
    assert result.metrics["quantized"] == 1
    [item] = result.metrics["unsupported"]
    assert item["op"] == "aten.linear.default" and "computed in the graph" in item["reason"]
    assert any("stays in float" in w and "computed in the graph" in w for w in output.warnings)
    assert count_ops(ir, DQ_WEIGHT) == 1


def test_op_kind_missing_from_the_graph_is_noted(tmp_path):
    output = Collecting()
    result = run(make_ir(TwoBranch()), tmp_path, ops=["linear", "conv2d"], output=output)
    assert result.metrics["absent_op_kinds"] == ["conv2d"]
    assert any("no conv2d op" in w for w in output.warnings)


def test_empty_calibration_set_is_a_data_error(tmp_path):
    ir = make_ir(TwoBranch())
    ctx = context(ir, tmp_path, calibration=[])
    with pytest.raises(DataError, match="quantize.int8 needs the calibration set") as info:
        QuantizeInt8(Int8Config()).run(ir, ctx)
    assert info.value.field == "data.calibration"
    assert "[data.calibration]" in info.value.fix


def test_outlier_split_moves_the_planted_channel_to_float(tmp_path):
    ir = make_ir(Planted())
    plain = make_ir(Planted())
    split = run(ir, tmp_path / "a", outlier_split=True, observer="minmax")
    run(plain, tmp_path / "b", observer="minmax")
    assert split.metrics["outlier_channels"] == {"fc2": [0]}
    side = [n for n in ir.graph.nodes if n.meta.get(FLOAT_META)]
    assert {str(n.target) for n in side} == {"aten.index_select.default", "aten.matmul.default"}
    # no mask multiply left in front of the quantize step: the int8 weight's outlier column
    # is zero instead, so whatever the clamped channel holds adds nothing to the GEMM
    assert count_ops(ir, "aten.mul.Tensor") == 0
    assert not [name for name, _ in ir.module.named_buffers() if "outlier_mask" in name]
    [weight] = [
        n.args[0]
        for n in ir.graph.nodes
        if str(n.target).startswith(DQ_WEIGHT)
        if module_name(next(iter(n.users))) == "fc2"
    ]
    int8_weight = getattr(ir.module, weight.target)
    assert int8_weight.dtype == torch.int8 and not int8_weight[:, 0].any()
    assert int8_weight[:, 1:].any()
    x = batches(seed=3)[0]["x"]
    with torch.no_grad():
        reference = Planted().eval()(x)[0]
        errors = [(m.module(x)[0] - reference).norm() / reference.norm() for m in (ir, plain)]
    assert errors[0] < errors[1] / 5


def test_duplicate_mode_is_exact_in_float_and_keeps_one_int8_gemm(tmp_path):
    from fxopt.passes.quantize.outliers import duplicate_outliers

    ir = make_ir(Planted())
    x = batches(seed=3)[0]["x"]
    with torch.no_grad():
        before = ir.module(x)[0]
    fc2 = next(
        n
        for n in ir.graph.nodes
        if n.target == torch.ops.aten.linear.default and module_name(n) == "fc2"
    )
    duplicate_outliers(ir.module, {fc2.name: [0]}, {fc2.name: [4]})
    with torch.no_grad():
        assert torch.allclose(ir.module(x)[0], before, rtol=1e-5, atol=1e-5)
    assert ir.module.fc2.weight.shape == (32, 35)  # channel 0 now 4 columns

    dup, plain = make_ir(Planted()), make_ir(Planted())
    result = run(
        dup, tmp_path / "a", outlier_split=True, outlier_mode="duplicate", observer="minmax"
    )
    run(plain, tmp_path / "b", observer="minmax")
    assert result.metrics["outlier_channels"] == {"fc2": [0]}
    assert not any(n.meta.get(FLOAT_META) for n in dup.graph.nodes)
    assert count_ops(dup, DQ_WEIGHT) == 4
    with torch.no_grad():
        reference = Planted().eval()(x)[0]
        errors = [(m.module(x)[0] - reference).norm() / reference.norm() for m in (dup, plain)]
    assert errors[0] < errors[1] / 3  # (the float split, above, does better: exact)


def test_float_weights_replaced_by_int8_do_not_stay_in_the_module(tmp_path):
    """An int8 artifact must be smaller than the float one, not carry both copies."""
    ir = make_ir(TwoBranch())
    before = ir.byte_size()
    run(ir, tmp_path)
    dtypes = {t.dtype for t in ir.module.parameters()} | {t.dtype for t in ir.module.buffers()}
    assert torch.int8 in dtypes
    float_weights = [n for n, t in ir.module.named_parameters() if t.dtype == torch.float32]
    assert not any(name.endswith("weight") for name in float_weights), float_weights
    assert ir.byte_size() < before * 0.7  # (per-channel scales and zero points remain)
