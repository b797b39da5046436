"""``quantize.smoothquant``: same float function, flatter activations, better int8."""

from __future__ import annotations

import pytest
import torch

from fxopt.engine.errors import DataError, RecipeError
from fxopt.passes.quantize import Int8Config, QuantizeInt8, SmoothQuant, SmoothQuantConfig
from fxopt.passes.quantize.channel_stats import channel_absmax
from tests.passes.quantize_support import Planted, TwoBranch, batches, context, make_ir


def smoothed(module, tmp_path, **config):
    ir = make_ir(module)
    result = SmoothQuant(SmoothQuantConfig(**config)).run(ir, context(ir, tmp_path))
    return ir, result


def out(ir, x):
    with torch.no_grad():
        return ir.module(x)[0]


def test_float_outputs_are_preserved(tmp_path):
    x = batches(seed=4)[0]["x"]
    reference = make_ir(Planted())
    ir, result = smoothed(Planted(), tmp_path, alpha=0.5)
    assert result.modified and result.metrics["smoothed"] == ["fc1", "fc2", "fc3", "fc4"]
    assert torch.allclose(out(ir, x), out(reference, x), rtol=1e-4, atol=1e-4)


def test_weights_are_replaced_not_edited_in_place(tmp_path):
    ir = make_ir(Planted())
    before = {k: v.clone() for k, v in ir.module.state_dict().items()}
    original = dict(ir.module.named_parameters())
    SmoothQuant(SmoothQuantConfig()).run(ir, context(ir, tmp_path))
    assert all(torch.equal(original[k], before[k]) for k in original)
    assert not torch.equal(ir.module.fc2.weight, before["fc2.weight"])


def test_linears_reading_one_tensor_share_one_division(tmp_path):
    ir, _ = smoothed(TwoBranch(), tmp_path, layers=["a", "b"])
    [mul] = [n for n in ir.graph.nodes if n.target == torch.ops.aten.mul.Tensor]
    users = {n.name for n in mul.users}
    assert len(users) == 2 and all(n.target == torch.ops.aten.linear.default for n in mul.users)


def test_outlier_channel_shrinks_and_int8_error_drops(tmp_path):
    x = batches(seed=4)[0]["x"]
    reference = out(make_ir(Planted()), x)
    plain = make_ir(Planted())
    QuantizeInt8(Int8Config(observer="minmax")).run(plain, context(plain, tmp_path / "a"))
    smooth, _ = smoothed(Planted(), tmp_path / "b", alpha=0.5, layers=["fc2"])
    fc2 = [n for n in smooth.graph.nodes if n.target == torch.ops.aten.linear.default][1]
    absmax = channel_absmax(smooth.module, [fc2], [(b["x"],) for b in batches()])[fc2.name]
    assert absmax.max() / absmax.median() < 20  # was ~500x before smoothing
    QuantizeInt8(Int8Config(observer="minmax")).run(smooth, context(smooth, tmp_path / "b"))
    errors = [(out(m, x) - reference).norm() / reference.norm() for m in (plain, smooth)]
    assert errors[1] < errors[0] / 5


def test_alpha_out_of_range_and_unknown_layers_are_refused(tmp_path):
    with pytest.raises(ValueError):
        SmoothQuantConfig(alpha=1.5)
    with pytest.raises(RecipeError, match="layers pattern 'nope' matches no linear module"):
        smoothed(TwoBranch(), tmp_path, layers=["nope"])


def test_an_empty_calibration_set_names_the_split_and_the_pass(tmp_path):
    ir = make_ir(TwoBranch())
    with pytest.raises(DataError) as info:
        SmoothQuant(SmoothQuantConfig()).run(ir, context(ir, tmp_path, calibration=[]))
    assert info.value.field == "data.calibration"
    assert "quantize.smoothquant needs the calibration set, and it is empty" in info.value.message
