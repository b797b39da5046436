"""ONNX Runtime lowering of Q/DQ graphs: the layout its int8 kernels fuse, checked on the
optimized graph ONNX Runtime itself writes (``model.ort.onnx``), not only on outputs."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fxopt.engine.config import DimRange
from fxopt.engine.specs import InputSpec
from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.plugins.onnxruntime import qdq
from fxopt.plugins.onnxruntime.backend import OnnxRuntimeBackend
from fxopt.plugins.onnxruntime.qdq import FUSED_MATMUL_OPS, rewrite_for_ort
from fxopt.testing.models import ResidualBlock
from tests.graphs import capture_model
from tests.passes.quantize_support import TwoBranch, batches, context, make_ir

#: whether this machine's ONNX Runtime int8 kernels saturate (x86 without VNNI), read before
#: any test forces the flag
SATURATES_HERE = qdq.u8s8_saturates()


def exported_layout(weight_range: int = 127) -> onnx.ModelProto:
    """What the exporter writes for one quantized linear: an int8 activation Q/DQ pair and
    ``DequantizeLinear(W [out, in], axis 0) -> Transpose -> MatMul``."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-weight_range, weight_range + 1, size=(3, 4)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array([0.01, 0.02, 0.03], np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(3, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wd"], axis=0),
        helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xd", "wt"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
        value_info=[helper.make_tensor_value_info("xq", TensorProto.INT8, [2, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def run_plain(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    return session.run(None, {"x": x})[0]


def test_rewrite_folds_the_transpose_and_moves_activations_to_uint8():
    model = exported_layout()
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    before = run_plain(model, x)
    stats = rewrite_for_ort(model, uint8_weights=False)
    assert stats == {
        "weight_transposes_folded": 1,
        "activations_to_uint8": 2,
        "weights_to_uint8": 0,
    }
    ops = [n.op_type for n in model.graph.node]
    assert "Transpose" not in ops
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    [weight_dq] = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    assert inits[weight_dq.input[0]].shape == (4, 3)
    assert [a.i for a in weight_dq.attribute if a.name == "axis"] == [1]
    act_zps = {n.input[2] for n in model.graph.node if n.input[0] not in inits and len(n.input) > 2}
    assert [(inits[z].dtype, int(inits[z])) for z in act_zps] == [(np.uint8, 128)]
    assert np.array_equal(run_plain(model, x), before)  # the same numbers, bit for bit


def test_uint8_weights_are_the_same_numbers():
    """``w + 128`` with zero point ``zp + 128`` dequantizes to the same floats: the graph's
    output is unchanged bit for bit (ONNX Runtime unoptimized, i.e. before any fusion)."""
    model = exported_layout()
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    reference = exported_layout()
    rewrite_for_ort(reference, uint8_weights=False)
    stats = rewrite_for_ort(model, uint8_weights=True)
    assert stats["weights_to_uint8"] == 1 and "VNNI" in stats["weights_to_uint8_why"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    old = {i.name: numpy_helper.to_array(i) for i in reference.graph.initializer}
    [weight_dq] = [n for n in model.graph.node if n.input[0] in inits]
    [old_dq] = [n for n in reference.graph.node if n.input[0] in old]
    weight, zero_point = inits[weight_dq.input[0]], inits[weight_dq.input[2]]
    assert weight.dtype == zero_point.dtype == np.uint8
    assert np.array_equal(weight.astype(np.int16) - 128, old[old_dq.input[0]])
    assert np.array_equal(zero_point.astype(np.int16) - 128, old[old_dq.input[2]])
    assert not any(v.dtype == np.int8 for v in inits.values())  # the int8 originals dropped
    assert np.array_equal(run_plain(model, x), run_plain(reference, x))


def test_weights_that_cannot_saturate_stay_int8():
    """|w| <= 64: a pair of products is at most 2 * 255 * 64 = 32640, within int16."""
    model = exported_layout(weight_range=64)
    assert rewrite_for_ort(model, uint8_weights=True)["weights_to_uint8"] == 0


@pytest.mark.parametrize(
    "machine, flags, saturates",
    [
        ("x86_64", "fpu sse2 avx2 fma", True),
        ("x86_64", "fpu sse2 avx2 avx512f avx512bw", True),
        ("x86_64", "fpu avx2 avx512f avx512_vnni", False),
        ("x86_64", "fpu avx2 avx_vnni", False),
        ("x86_64", "fpu avx2 avx512_vnni amx_int8 amx_tile", False),
        ("x86_64", None, False),  # flags unreadable: unknown, nothing changes
        ("aarch64", "fp asimd asimddp", False),  # ARM's kernels do not saturate
    ],
)
def test_u8s8_saturates_reads_the_cpu_flags(tmp_path, monkeypatch, machine, flags, saturates):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(qdq, "CPUINFO", cpuinfo)
    monkeypatch.setattr(qdq.platform, "machine", lambda: machine)
    assert qdq.u8s8_saturates() is saturates


def lower_two_branch(tmp_path):
    ir = make_ir(TwoBranch())
    result = QuantizeInt8(Int8Config()).run(ir, context(ir, tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    backend = OnnxRuntimeBackend()
    return ir, result.metrics["quantized"], out, backend, backend.lower(ir, out)


@pytest.mark.parametrize("saturates", [True, False], ids=["u8s8-saturates", "vnni"])
def test_every_quantized_linear_runs_as_a_fused_int8_matmul(tmp_path, monkeypatch, saturates):
    """Both branches of the CPU check, forced, on any machine: without VNNI the weights are
    uint8 (ONNX Runtime's exact U8U8 kernel), with it they stay int8 (U8S8). The outputs are
    checked wherever the kernel that runs is exact: U8U8 anywhere, U8S8 only on a CPU whose
    int8 kernels do not saturate."""
    monkeypatch.setattr(qdq, "u8s8_saturates", lambda: saturates)
    ir, quantized, out, backend, artifact = lower_two_branch(tmp_path)
    assert artifact.info["qdq_rewrite"]["weight_transposes_folded"] == quantized == 3
    assert artifact.info["qdq_rewrite"]["weights_to_uint8"] == (quantized if saturates else 0)
    assert "warnings" not in artifact.info

    exported = onnx.load(str(out / "model.onnx"))
    producers = {o: n for n in exported.graph.node for o in n.output}
    for node in exported.graph.node:
        if node.op_type == "Transpose":
            assert producers[node.input[0]].op_type != "DequantizeLinear"

    optimized = onnx.load(str(out / "model.ort.onnx"))
    counts = collections.Counter(n.op_type for n in optimized.graph.node)
    assert sum(counts[op] for op in FUSED_MATMUL_OPS) == quantized, counts
    assert counts["DequantizeLinear"] == 0 and counts["MatMul"] == 0, counts
    # each linear's bias is the fused kernel's bias input, not an Add after it
    fused = [n for n in optimized.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(fused) == quantized and all(len(n.input) == 7 and n.input[6] for n in fused)
    assert counts["Add"] == 1, counts  # only the model's own a(x) + b(x)
    inits = {i.name: i.data_type for i in optimized.graph.initializer}
    weight_type = TensorProto.UINT8 if saturates else TensorProto.INT8
    assert all(inits[n.input[1]] == weight_type for n in fused)

    if saturates or not SATURATES_HERE:
        x = batches(seed=2)[0]["x"]
        with torch.no_grad():
            expected = ir.module(x)[0].numpy()
        got = backend.load(out, artifact).run({"x": x.numpy()})[0]
        assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def test_uint8_weights_keep_the_qdq_graph_and_fix_the_fused_one(tmp_path, monkeypatch):
    """The same quantized model lowered with and without the uint8 weights: ``model.onnx``
    (the Q/DQ graph, run unoptimized) gives the same outputs both ways, and the fused
    ``model.ort.onnx`` with uint8 weights is within the error bound on this machine, VNNI or
    not. (With int8 weights on a CPU without VNNI it is not: 0.2-0.63 against 0.05 x 1.24.)"""
    x = batches(seed=2)[0]["x"]
    runs = {}
    for flag in (False, True):
        monkeypatch.setattr(qdq, "u8s8_saturates", lambda flag=flag: flag)
        ir, _, out, backend, artifact = lower_two_branch(tmp_path / str(flag))
        assert artifact.info["qdq_rewrite"]["weights_to_uint8"] == (3 if flag else 0)
        runs[flag] = run_plain(onnx.load(str(out / "model.onnx")), x.numpy())
    assert np.array_equal(runs[True], runs[False])

    with torch.no_grad():
        expected = ir.module(x)[0].numpy()
    fused = backend.load(out, artifact).run({"x": x.numpy()})[0]
    assert np.abs(fused - expected).max() < 0.05 * np.abs(expected).max()
    assert np.abs(runs[True] - expected).max() < 0.05 * np.abs(expected).max()


class SmallCNN(torch.nn.Module):
    """conv → ReLU → conv → ReLU → max-pool → linear, on 8x8 single-channel images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 16, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return (self.fc(torch.flatten(torch.nn.functional.max_pool2d(x, 2), 1)),)


class ResidualCNN(torch.nn.Module):
    """A ResNet in small: conv stem → ReLU → residual block → max-pool → linear. The block's
    second convolution feeds the residual add (in float), not a quantize step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.block = ResidualBlock(8)
        self.fc = torch.nn.Linear(8 * 16, 10)

    def forward(self, x):
        x = self.block(torch.relu(self.stem(x)))
        return (self.fc(torch.flatten(torch.nn.functional.max_pool2d(x, 2), 1)),)


def quantized_cnn(tmp_path, activations: str, model: type[torch.nn.Module] = SmallCNN):
    spec = InputSpec("x", "float32", ("batch", 1, 8, 8), 0.0, 1.0)
    ir = capture_model(model().eval(), spec, {"batch": DimRange(min=1, opt=8, max=32)})
    images = batches(features=(1, 8, 8), seed=3)
    calibration = [{"x": b["x"].abs()} for b in images]
    config = Int8Config(ops=["linear", "conv2d"], activations=activations, observer="minmax")
    QuantizeInt8(config).run(ir, context(ir, tmp_path / "cache", calibration=calibration))
    return ir, calibration


def test_uint8_activations_run_convolutions_as_qlinearconv(tmp_path):
    """ONNX Runtime makes a QLinearConv of ``DQ -> Conv -> Q`` only; a ReLU between the conv
    and the next op's quantize step drops out when that step's zero point is 0, which the
    affine uint8 form gives a ReLU output (int8_sym, moved to uint8, has 128 and leaves the
    convolutions in float: 2.3x slower than fp32 on the digits CNN)."""
    ir, calibration = quantized_cnn(tmp_path, "uint8")
    out = tmp_path / "out"
    out.mkdir()
    backend = OnnxRuntimeBackend()
    artifact = backend.lower(ir, out)
    counts = collections.Counter(
        n.op_type for n in onnx.load(str(out / "model.ort.onnx")).graph.node
    )
    assert counts["QLinearConv"] == 2, counts
    assert counts["Conv"] == counts["FusedConv"] == 0, counts
    assert artifact.info["qdq_rewrite"]["float_ops"] == {} and "warnings" not in artifact.info

    x = calibration[0]["x"]
    with torch.no_grad():
        expected = ir.module(x)[0].numpy()
    got = backend.load(out, artifact).run({"x": x.numpy()})[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def test_convolutions_left_in_float_are_reported_with_the_fix(tmp_path):
    ir, _ = quantized_cnn(tmp_path, "int8_sym")
    out = tmp_path / "out"
    out.mkdir()
    artifact = OnnxRuntimeBackend().lower(ir, out)
    assert artifact.info["qdq_rewrite"]["float_ops"] == {"FusedConv": 2}
    [warning] = artifact.info["warnings"]
    assert "2 FusedConv" in warning and 'activations = "uint8"' in warning


def test_convolutions_left_in_float_with_uint8_activations_say_why_not_to_set_uint8(tmp_path):
    """The uint8 hint only where it applies: with uint8 activations already, a convolution
    left in float is one whose output goes to a float op (the residual add)."""
    ir, _ = quantized_cnn(tmp_path, "uint8", ResidualCNN)
    out = tmp_path / "out"
    out.mkdir()
    artifact = OnnxRuntimeBackend().lower(ir, out)
    assert artifact.info["qdq_rewrite"]["activations_to_uint8"] == 0
    left = artifact.info["qdq_rewrite"]["float_ops"]
    assert sum(left.values()) >= 1 and all("Conv" in op for op in left), left
    [warning] = artifact.info["warnings"]
    assert "left in float by ONNX Runtime's fusions" in warning
    assert 'set activations = "uint8"' not in warning
    assert "the activations are uint8 already" in warning and "residual add" in warning
