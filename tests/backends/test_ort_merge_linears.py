"""``merge_parallel_linears``: quantized linears that read one activation become one int8
GEMM and a Split, and every output stays what it was (benchmarks/int8_graph.py's variant)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.plugins.onnxruntime.backend import OnnxRuntimeBackend
from fxopt.plugins.onnxruntime.merge_linears import merge_parallel_linears
from tests.passes.quantize_support import TwoBranch, batches, context, make_ir

WIDTHS = (4, 4, 6)  # Q, K and V need not be as wide as each other


def parallel_linears() -> onnx.ModelProto:
    """Three linears of one uint8 activation, each ``DQ(W^T) -> MatMul -> Add(bias) ->
    Add(outlier side product of the gathered input channels)`` (one with a per-tensor scale
    and no zero point), a fourth that reads it with a bias only (not merged with them) and a
    fifth that reads another activation."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array([1, 6], np.int64), "outliers"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        helper.make_node("Gather", ["x", "outliers"], ["x_outliers"], axis=-1),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "x_scale", "x_zp"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "x_scale", "x_zp"], ["rd"]),
    ]

    def linear(name: str, x: str, width: int, side: bool, per_channel: bool = True) -> str:
        inits.append(
            numpy_helper.from_array(rng.integers(-127, 128, (8, width)).astype(np.int8), name)
        )
        scale = rng.uniform(0.01, 0.03, width if per_channel else ()).astype(np.float32)
        inits.append(numpy_helper.from_array(scale, f"{name}_scale"))
        dq_inputs = [name, f"{name}_scale"]
        if per_channel:
            inits.append(numpy_helper.from_array(np.zeros(width, np.int8), f"{name}_zp"))
            dq_inputs.append(f"{name}_zp")
        bias = rng.normal(size=width).astype(np.float32)
        inits.append(numpy_helper.from_array(bias, f"{name}_bias"))
        nodes.extend(
            [
                helper.make_node("DequantizeLinear", dq_inputs, [f"{name}_w"], axis=1),
                helper.make_node("MatMul", [x, f"{name}_w"], [f"{name}_mm"]),
                helper.make_node("Add", [f"{name}_mm", f"{name}_bias"], [f"{name}_linear"]),
            ]
        )
        if not side:
            return f"{name}_linear"
        side_weight = rng.normal(size=(2, width)).astype(np.float32)
        inits.append(numpy_helper.from_array(side_weight, f"{name}_side_weight"))
        nodes.extend(
            [
                helper.make_node("MatMul", ["x_outliers", f"{name}_side_weight"], [f"{name}_s"]),
                helper.make_node("Add", [f"{name}_linear", f"{name}_s"], [f"{name}_out"]),
            ]
        )
        return f"{name}_out"

    q = linear("q", "xd", WIDTHS[0], side=True)
    k = linear("k", "xd", WIDTHS[1], side=True, per_channel=False)
    v = linear("v", "xd", WIDTHS[2], side=True)
    other = linear("other", "xd", 5, side=False)
    elsewhere = linear("elsewhere", "rd", 3, side=True)
    nodes.append(helper.make_node("Relu", [q], ["q_relu"]))
    results = ["q_relu", k, v, other, elsewhere]
    widths = [WIDTHS[0], WIDTHS[1], WIDTHS[2], 5, 3]
    graph = helper.make_graph(
        nodes,
        "parallel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, width])
            for name, width in zip(results, widths, strict=True)
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def run(model: onnx.ModelProto, feeds: dict, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), options).run(None, feeds)


def optimized_ops(model: onnx.ModelProto, path) -> collections.Counter[str]:
    """The op types of ONNX Runtime's optimized graph of ``model``, as the backend makes it."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(
        model.SerializeToString(), options, disabled_optimizers=["MatMulAddFusion"]
    )
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_q_k_v_become_one_gemm_and_a_split_with_the_same_outputs(tmp_path):
    model = parallel_linears()
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)
    before = run(model, {"x": x})
    before_all = run(model, {"x": x}, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)

    assert merge_parallel_linears(model.graph) == 2
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    # one int8 MatMul and one side product for q, k, v; other's and elsewhere's own
    assert ops["MatMul"] == 2 + 1 + 2 and ops["Split"] == 1, ops
    [split] = [n for n in model.graph.node if n.op_type == "Split"]
    sizes = next(i for i in model.graph.initializer if i.name == split.input[1])
    assert numpy_helper.to_array(sizes).tolist() == list(WIDTHS)
    after = run(model, {"x": x})
    for got, expected in zip(after, before, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)

    # ONNX Runtime fuses the merged linear into one MatMulIntegerToFloat, numbers unchanged
    assert optimized_ops(model, tmp_path / "merged.ort.onnx")["MatMulIntegerToFloat"] == 3
    after_all = run(model, {"x": x}, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    for got, expected in zip(after_all, before_all, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert merge_parallel_linears(model.graph) == 0  # nothing left to merge


def test_the_exporters_linears_of_one_input_merge(tmp_path):
    """TwoBranch's ``a`` and ``b`` as the backend exports them (Gemm folded into MatMul + Add,
    uint8 activations), lowered and optimized by ONNX Runtime: one int8 GEMM fewer, the same
    outputs."""
    ir = make_ir(TwoBranch())
    QuantizeInt8(Int8Config()).run(ir, context(ir, tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    OnnxRuntimeBackend().lower(ir, out)
    model = onnx.load(str(out / "model.onnx"))
    feeds = {"x": batches(seed=2)[0]["x"].numpy()}
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    before = run(model, feeds, level)[0]

    assert merge_parallel_linears(model.graph) == 1
    assert optimized_ops(model, tmp_path / "merged.ort.onnx")["MatMulIntegerToFloat"] == 2
    np.testing.assert_allclose(run(model, feeds, level)[0], before, rtol=1e-5, atol=1e-6)
