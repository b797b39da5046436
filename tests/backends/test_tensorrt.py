"""The TensorRT backend without TensorRT: profiles, the build description and its consumption
(against a recording stand-in for the ``tensorrt`` module), availability errors, and the static
compatibility checker on good and bad ONNX models. A real build runs only under ``-m gpu``."""

from __future__ import annotations

import copy
import importlib
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.errors import BackendUnavailableError, RecipeError
from fxopt.engine.pass_base import PassContext
from fxopt.engine.specs import InputSpec
from fxopt.passes.cast import CastFP16
from fxopt.plugins.onnx.export import export_onnx
from fxopt.plugins.tensorrt import backend as tensorrt_backend
from fxopt.plugins.tensorrt.backend import TensorRTBackend, TensorRTOptions
from fxopt.plugins.tensorrt.build import EngineBuildError, build_engine, build_spec
from fxopt.plugins.tensorrt.compat import check_model, load_table
from fxopt.plugins.tensorrt.profiles import (
    ShapeRange,
    check_covered,
    compute_profiles,
    ir_dims,
    profiles_from_json,
    profiles_to_json,
)
from fxopt.run.recipe import parse_recipe
from tests.graphs import capture_module

TEXT = [InputSpec(n, "int64", ("batch", "sequence")) for n in ("input_ids", "attention_mask")]
DIMS = {"batch": DimRange(min=1, opt=8, max=64), "sequence": DimRange(min=2, opt=128, max=512)}


# -- profiles ---------------------------------------------------------------------------------


def test_profile_from_dims():
    (profile,) = compute_profiles(TEXT, DIMS)
    assert profile["input_ids"] == ShapeRange(min=(1, 2), opt=(8, 128), max=(64, 512))
    assert profile["attention_mask"] == profile["input_ids"]
    image = InputSpec("pixel_values", "float32", ("batch", 3, 224, 224))
    (profile,) = compute_profiles([image], {"batch": DimRange(min=1, max=16)})
    assert profile["pixel_values"].opt == (8, 3, 224, 224)  # opt defaults to min(max(min, 8), max)
    assert profiles_from_json(profiles_to_json([profile])) == [profile]


def test_narrowed_profiles():
    small, large = compute_profiles(
        TEXT,
        DIMS,
        [{"batch": DimRange(min=1, opt=1, max=4)}, {"batch": DimRange(min=8, opt=32, max=64)}],
    )
    assert small["input_ids"] == ShapeRange((1, 2), (1, 128), (4, 512))
    assert large["input_ids"] == ShapeRange((8, 2), (32, 128), (64, 512))


def test_profile_wider_than_captured_dims_is_an_error():
    with pytest.raises(RecipeError) as err:
        compute_profiles(TEXT, DIMS, [{"batch": DimRange(min=1, max=128)}], label="r.toml")
    assert "target.options.profiles[0].batch" in str(err.value)
    assert "1..64" in str(err.value)
    with pytest.raises(RecipeError, match="no input has an axis named 'height'"):
        compute_profiles(TEXT, DIMS, [{"height": DimRange(min=1, max=2)}])


def test_axis_without_range_is_an_error():
    with pytest.raises(RecipeError) as err:
        compute_profiles(TEXT, {"batch": DIMS["batch"]})
    assert "model.dims.sequence" in str(err.value)


def test_min_greater_than_max_is_a_recipe_error():
    with pytest.raises(RecipeError) as err:
        parse_recipe({"model": {"dims": {"batch": {"min": 8, "max": 4}}}})
    assert "model.dims.batch" in str(err.value)
    assert "min (8) must be <= max (4)" in str(err.value)


def test_shapes_outside_every_profile_name_the_axis():
    profiles = compute_profiles(TEXT, {**DIMS, "sequence": DimRange(min=2, max=64)})
    check_covered(profiles, TEXT, {"input_ids": (8, 64), "attention_mask": (8, 64)})
    with pytest.raises(RecipeError) as err:
        check_covered(profiles, TEXT, {"input_ids": (8, 128), "attention_mask": (8, 128)})
    message = str(err.value)
    assert "model.dims.sequence" in message
    assert "input_ids (8, 128) is outside [1..64, 2..64]" in message


def test_ir_dims_recover_the_captured_ranges():
    ir = capture_module(torch.nn.Linear(8, 4))  # batch 1..32, opt 4
    assert ir_dims(ir) == {"batch": DimRange(min=1, opt=4, max=32)}


# -- the build, described and consumed --------------------------------------------------------


def test_build_spec_from_options(tmp_path):
    options = TensorRTOptions(
        workspace_mib=512, optimization_level=5, timing_cache=str(tmp_path / "t.cache")
    )
    profiles = compute_profiles(TEXT, DIMS)
    spec = build_spec(options, profiles)
    assert spec.workspace_bytes == 512 * 2**20
    assert spec.optimization_level == 5
    assert spec.strongly_typed is True
    assert spec.timing_cache == tmp_path / "t.cache"
    described = spec.to_json()
    assert described["profiles"][0]["input_ids"] == {
        "min": [1, 2],
        "opt": [8, 128],
        "max": [64, 512],
    }
    assert build_spec(TensorRTOptions(timing_cache=None), profiles).timing_cache is None
    assert TensorRTOptions().timing_cache.startswith("~/")


def fake_tensorrt(log: list, parse_ok: bool = True) -> types.SimpleNamespace:
    """Records what the builder is told; the API surface build_engine uses, nothing more."""

    class Recorder:
        def __init__(self, name):
            self._name = name

        def __getattr__(self, attr):
            def call(*args, **kwargs):
                log.append((f"{self._name}.{attr}", args))
                return Recorder(attr)

            return call

    class Config(Recorder):
        def __setattr__(self, attr, value):
            if attr.startswith("_"):
                return object.__setattr__(self, attr, value)
            log.append((f"config.{attr}", (value,)))
            return None

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"cache-v2")

    class Error:
        def node_name(self):
            return "node_Det_7"

        def node_operator(self):
            return "Det"

        def desc(self):
            return "No importer registered for op: Det"

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            log.append(("parser.parse_from_file", (path,)))
            return parse_ok

        def get_error(self, index):
            return Error()

    class Builder(Recorder):
        def __init__(self, logger):
            super().__init__("builder")

        def create_network(self, flags):
            log.append(("builder.create_network", (flags,)))
            return object()

        def create_builder_config(self):
            return Config("config")

        def create_optimization_profile(self):
            return Recorder("profile")

        def build_serialized_network(self, network, config):
            return b"PLAN"

    return types.SimpleNamespace(
        __version__="10.1.0",
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=Builder,
        OnnxParser=Parser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=3),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
    )


def test_build_engine_applies_the_spec(tmp_path):
    cache = tmp_path / "cache" / "timing.cache"
    cache.parent.mkdir()
    cache.write_bytes(b"cache-v1")
    spec = build_spec(
        TensorRTOptions(workspace_mib=64, optimization_level=2, timing_cache=str(cache)),
        compute_profiles(TEXT, DIMS, [{"batch": DimRange(min=1, max=4)}, {}]),
    )
    log: list = []
    plan = build_engine(fake_tensorrt(log), tmp_path / "model.onnx", spec)
    assert plan == b"PLAN"
    calls = dict(log)
    assert calls["builder.create_network"] == (1 << 3,)  # STRONGLY_TYPED, nothing else
    assert calls["config.set_memory_pool_limit"] == ("WORKSPACE", 64 * 2**20)
    assert calls["config.builder_optimization_level"] == (2,)
    assert calls["config.create_timing_cache"] == (b"cache-v1",)
    shapes = [args for name, args in log if name == "profile.set_shape"]
    assert shapes[0] == ("input_ids", (1, 2), (4, 128), (4, 512))
    assert shapes[2] == ("input_ids", (1, 2), (8, 128), (64, 512))
    assert len([n for n, _ in log if n == "config.add_optimization_profile"]) == 2
    assert cache.read_bytes() == b"cache-v2"  # written back for the next build


def test_parser_errors_name_the_node(tmp_path):
    spec = build_spec(TensorRTOptions(timing_cache=None), compute_profiles(TEXT, DIMS))
    with pytest.raises(EngineBuildError) as err:
        build_engine(fake_tensorrt([], parse_ok=False), tmp_path / "model.onnx", spec)
    assert "node 'node_Det_7' (Det): No importer registered for op: Det" in str(err.value)


class Det(torch.nn.Module):
    def forward(self, x):
        return (torch.linalg.det(x.reshape(-1, 2, 2)),)


def test_lower_names_an_unparseable_op_before_building(monkeypatch, tmp_path):
    log: list = []
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda: fake_tensorrt(log))
    ir = capture_module(Det(), features=4)
    with pytest.raises(EngineBuildError) as err:
        TensorRTBackend(TensorRTOptions(timing_cache=None)).lower(ir, tmp_path)
    assert "node 'n0' (Det): Det is not supported by TensorRT 10.1's ONNX parser" in str(err.value)
    assert log == []  # refused before any builder call


def test_lower_builds_a_plan_from_the_description(monkeypatch, tmp_path, fp16_onnx):
    log: list = []
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda: fake_tensorrt(log))
    ir, _ = fp16_onnx
    artifact = TensorRTBackend(TensorRTOptions(timing_cache=None)).lower(ir, tmp_path)
    assert (tmp_path / "model.plan").read_bytes() == b"PLAN"
    assert artifact.path == "model.plan" and "model.onnx" in artifact.files
    build = artifact.info["build"]
    assert build["strongly_typed"] is True
    assert build["profiles"] == [{"x": {"min": [1, 8], "opt": [4, 8], "max": [32, 8]}}]
    assert ("profile.set_shape", ("x", (1, 8), (4, 8), (32, 8))) in log


# -- availability -----------------------------------------------------------------------------


def without_tensorrt(monkeypatch):
    real = importlib.import_module

    def fake(name, *args):
        if name == "tensorrt":
            raise ModuleNotFoundError("No module named 'tensorrt'")
        return real(name, *args)

    monkeypatch.setattr(tensorrt_backend.importlib, "import_module", fake)


def test_missing_tensorrt_says_what_to_install(monkeypatch):
    without_tensorrt(monkeypatch)
    with pytest.raises(BackendUnavailableError) as err:
        TensorRTBackend().check_available()
    assert err.value.exit_code == 4
    assert "pip install 'fxopt[tensorrt]'" in err.value.render()


def test_missing_gpu_is_reported(monkeypatch):
    monkeypatch.setattr(
        tensorrt_backend.importlib,
        "import_module",
        lambda name: types.SimpleNamespace(__version__="10.1.0"),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        TensorRTBackend().check_available()
    monkeypatch.setattr(
        tensorrt_backend.importlib,
        "import_module",
        lambda name: types.SimpleNamespace(__version__="8.6.1"),
    )
    with pytest.raises(BackendUnavailableError, match="TensorRT 10 or newer"):
        TensorRTBackend().check_available()


# -- the static checker: a good model ---------------------------------------------------------


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.down = torch.nn.Linear(16, 4)

    def forward(self, x):
        return (self.down(torch.nn.functional.gelu(self.norm(self.up(x)))),)


@pytest.fixture(scope="module")
def fp16_onnx(tmp_path_factory):
    torch.manual_seed(0)
    ir = capture_module(Block())
    recipe = parse_recipe({"target": {"backend": "tensorrt"}})
    ctx = PassContext(
        recipe, lambda s: [], lambda f: [], lambda i: {}, Path("."), Output(quiet=True)
    )
    ir = CastFP16().run(copy.deepcopy(ir), ctx).ir
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(ir, path)
    return ir, onnx.load(str(path))


def test_good_model_is_compatible(fp16_onnx):
    ir, model = fp16_onnx
    profiles = compute_profiles(ir.inputs, ir_dims(ir))
    report = check_model(model, profiles, specs=ir.inputs, runs=[{"x": (4, 8)}])
    assert report.compatible, [str(p) for p in report.problems]
    assert report.precisions["LayerNormalization"] == {"FP32": 1}
    assert report.precisions["Gemm"] == {"FP16": 1, "FP32": 1}  # the last one: the logits
    assert report.casts["FP32->FP16"] >= 1
    assert report.inputs == [{"name": "x", "dtype": "FP32", "shape": ["batch", 8]}]
    assert "10.1" in report.table


def test_table_is_data_with_its_source():
    table = load_table()
    assert "onnx-tensorrt" in table["source"] and "release/10.1-GA" in table["source"]
    assert table["operators"]["MatMul"]["supported"] is True
    assert table["operators"]["Det"]["supported"] is False
    assert table["operators"]["Slice"]["constant_inputs"] == ["axes"]
    assert len(table["operators"]) > 150


# -- the static checker: bad models -----------------------------------------------------------


def model_of(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("acme", 1)]
    return helper.make_model(graph, opset_imports=imports)


def value(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def x_profile(batch=(1, 8)):
    spec = InputSpec("x", "float32", ("batch", 4))
    return [spec], compute_profiles([spec], {"batch": DimRange(min=batch[0], max=batch[1])})


def test_unsupported_op_is_named_with_its_node():
    model = model_of(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu_0"),
            helper.make_node("Det", ["m"], ["d"], name="det_of_m"),
            helper.make_node("Frobnicate", ["r"], ["y"], name="custom_1", domain="acme"),
        ],
        [value("x", TensorProto.FLOAT, ["batch", 4]), value("m", TensorProto.FLOAT, [3, 3])],
        [value("y", TensorProto.FLOAT, None), value("d", TensorProto.FLOAT, None)],
    )
    specs, profiles = x_profile()
    specs.append(InputSpec("m", "float32", (3, 3)))
    profiles[0]["m"] = ShapeRange((3, 3), (3, 3), (3, 3))
    report = check_model(model, profiles, specs=specs)
    assert not report.compatible
    by_node = {p.node: p for p in report.problems}
    assert set(by_node) == {"det_of_m", "custom_1"}
    assert by_node["det_of_m"].op == "Det"
    assert "not supported by TensorRT 10.1" in by_node["det_of_m"].message
    assert "custom domain 'acme'" in by_node["custom_1"].message


def qdq_model(zero_point: np.ndarray, scale: np.ndarray, axis: int = 1) -> onnx.ModelProto:
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q_x", axis=axis)
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq_x", axis=axis)
    return model_of(
        [q, dq],
        [value("x", TensorProto.FLOAT, ["batch", 4])],
        [value("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero_point, "z")],
    )


def test_symmetric_int8_qdq_is_fine():
    specs, profiles = x_profile()
    model = qdq_model(np.array(0, np.int8), np.array(0.1, np.float32))
    assert check_model(model, profiles, specs=specs).problems == []


def test_asymmetric_zero_point_is_a_problem():
    specs, profiles = x_profile()
    report = check_model(
        qdq_model(np.array(3, np.int8), np.array(0.1, np.float32)), profiles, specs=specs
    )
    assert [(p.kind, p.node) for p in report.problems] == [("qdq", "q_x"), ("qdq", "dq_x")]
    assert "asymmetric quantization: zero point [3]" in report.problems[0].message


def test_uint8_and_per_channel_activation_are_problems():
    specs, profiles = x_profile()
    report = check_model(
        qdq_model(np.array(0, np.uint8), np.array(0.1, np.float32)), profiles, specs=specs
    )
    assert any("quantized type UINT8" in p.message for p in report.problems)
    report = check_model(
        qdq_model(np.zeros(4, np.int8), np.full(4, 0.1, np.float32)), profiles, specs=specs
    )
    assert {p.node for p in report.problems} == {"q_x", "dq_x"}
    assert all("per-channel scale on an activation" in p.message for p in report.problems)


def weight_qdq_model(axis: int) -> onnx.ModelProto:
    """x[batch, 4] @ dequantize(W int8 [4, 8]) with per-channel scales along ``axis``."""
    channels = 8 if axis == 1 else 4
    weight = numpy_helper.from_array(np.ones((4, 8), np.int8), "w")
    scale = numpy_helper.from_array(np.full(channels, 0.02, np.float32), "ws")
    zero = numpy_helper.from_array(np.zeros(channels, np.int8), "wz")
    dq = helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], name="dq_w", axis=axis)
    matmul = helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")
    return model_of(
        [dq, matmul],
        [value("x", TensorProto.FLOAT, ["batch", 4])],
        [value("y", TensorProto.FLOAT, ["batch", 8])],
        [weight, scale, zero],
    )


def test_per_channel_weight_axis_must_follow_output_channels():
    specs, profiles = x_profile()
    assert check_model(weight_qdq_model(axis=1), profiles, specs=specs).problems == []
    (problem,) = check_model(weight_qdq_model(axis=0), profiles, specs=specs).problems
    assert problem.node == "dq_w"
    assert "per-channel axis 0 does not follow the output channels of MatMul 'mm'" in str(problem)


def fake_quant_linear_model(axis: int) -> onnx.ModelProto:
    """Q/DQ of a float weight [out 8, in 4] (as exported for a Linear), Transpose, MatMul."""
    channels = 8 if axis == 0 else 4
    inits = [
        numpy_helper.from_array(np.ones((8, 4), np.float32), "w"),
        numpy_helper.from_array(np.full(channels, 0.02, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="q_w", axis=axis),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], name="dq_w", axis=axis),
        helper.make_node("Transpose", ["wf"], ["wt"], name="t_w", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
    ]
    return model_of(
        nodes,
        [value("x", TensorProto.FLOAT, ["batch", 4])],
        [value("y", TensorProto.FLOAT, ["batch", 8])],
        inits,
    )


def test_fake_quantized_weight_axis_is_followed_through_transpose():
    specs, profiles = x_profile()
    assert check_model(fake_quant_linear_model(axis=0), profiles, specs=specs).problems == []
    (problem,) = check_model(fake_quant_linear_model(axis=1), profiles, specs=specs).problems
    assert problem.node == "dq_w" and "MatMul 'mm'" in problem.message


def test_dynamic_dim_outside_the_profile():
    model = model_of(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [value("x", TensorProto.FLOAT, ["batch", 4])],
        [value("y", TensorProto.FLOAT, ["batch", 4])],
    )
    specs, profiles = x_profile(batch=(1, 8))
    report = check_model(model, profiles, specs=specs, runs=[{"x": (16, 4)}, {"x": (16, 4)}])
    (problem,) = report.problems
    assert problem.kind == "profile" and problem.field == "model.dims.batch"
    assert "x (16, 4) is outside [1..8, 4]" in problem.message


def test_fixed_onnx_dim_against_a_ranged_profile():
    model = model_of(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [value("x", TensorProto.FLOAT, [2, 4])],
        [value("y", TensorProto.FLOAT, [2, 4])],
    )
    specs, profiles = x_profile()
    (problem,) = check_model(model, profiles, specs=specs).problems
    assert "axis 0 is fixed at 2" in problem.message
    assert problem.field == "model.dims.batch"


def test_opset_and_computed_constant_inputs():
    shape = helper.make_node("Shape", ["x"], ["shape"], name="shape_of_x", start=1, end=2)
    unsqueeze = helper.make_node("Unsqueeze", ["x", "shape"], ["y"], name="unsq")
    model = model_of(
        [shape, unsqueeze],
        [value("x", TensorProto.FLOAT, ["batch", 4])],
        [value("y", TensorProto.FLOAT, None)],
        opset=23,
    )
    specs, profiles = x_profile()
    problems = {p.kind: p for p in check_model(model, profiles, specs=specs).problems}
    assert problems["opset"].field == "target.options.opset"
    assert "opsets 9 to 20" in problems["opset"].message
    assert problems["constant-input"].node == "unsq"
    assert "'axes' must be a constant" in problems["constant-input"].message


# -- a real build: only where TensorRT and a GPU are ---------------------------------------------


@pytest.mark.gpu
def test_real_build_and_run(fp16_onnx, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ir, _ = fp16_onnx
    backend = TensorRTBackend(TensorRTOptions(timing_cache=str(tmp_path / "timing.cache")))
    backend.check_available()
    artifact = backend.lower(ir, tmp_path)
    runner = backend.load(tmp_path, artifact)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8)).astype(np.float32)
    (got,) = runner.run({"x": x})
    (want,) = ir.run({"x": torch.from_numpy(x)})
    assert np.abs(got - want.float().numpy()).max() < 1e-2
    assert (tmp_path / "timing.cache").stat().st_size > 0
