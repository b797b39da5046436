"""Each backend lowers an IR, loads the artifact and matches the graph's outputs."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from fxopt.engine.backend import Artifact
from fxopt.engine.config import DimRange
from fxopt.engine.errors import BackendUnavailableError
from fxopt.engine.specs import InputSpec
from fxopt.passes.cast import CastConfig, CastFP16
from fxopt.plugins.onnxruntime.backend import OnnxRuntimeBackend, OrtOptions
from fxopt.plugins.torch.backend import TorchBackend, TorchOptions
from tests.graphs import capture_model, capture_module
from tests.passes.prune_models import context


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_onnxruntime_lowering_is_dynamic_and_exact(tmp_path, batch):
    ir = capture_module(small_model())
    backend = OnnxRuntimeBackend(OrtOptions(intra_op_threads=1))
    artifact = backend.lower(ir, tmp_path)
    assert artifact.path == "model.ort.onnx"
    assert {"model.onnx", "model.ort.onnx"} <= set(artifact.files)

    model = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 8]
    assert model.graph.output[0].name == "y"

    runner = backend.load(tmp_path, Artifact.from_json(artifact.to_json()))
    x = torch.randn(batch, 8)
    got = runner.run({"x": x.numpy()})[0]
    np.testing.assert_allclose(got, ir.run({"x": x})[0].numpy(), atol=1e-5)


def test_a_same_named_data_file_in_the_working_directory_does_not_stop_lowering(
    tmp_path, monkeypatch
):
    """onnx checks whether the external data file exists relative to the *current*
    directory: a ``model.onnx.data`` wherever the user runs ``optimize`` made it fail."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx.data").write_bytes(b"someone else's")
    out = tmp_path / "out"
    out.mkdir()
    backend = OnnxRuntimeBackend(OrtOptions(intra_op_threads=1))
    artifact = backend.lower(capture_module(small_model()), out)
    assert "model.onnx" in artifact.files
    assert (tmp_path / "model.onnx.data").read_bytes() == b"someone else's"
    assert os.getcwd() == str(tmp_path)


class ResidualNorm(torch.nn.Module):
    """``LayerNorm(x + Linear(x))`` on token states: the pattern ONNX Runtime fuses into
    ``SkipLayerNormalization``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dense = torch.nn.Linear(16, 16)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(x + self.dense(x))


@pytest.mark.parametrize("fuse", [False, True])
def test_skip_layernorm_fusion_is_off_unless_asked_for(tmp_path, monkeypatch, fuse):
    """ONNX Runtime's SkipLayerNormalization CPU kernel ran 4-5x slower than its
    LayerNormalization + Add here (benchmarks/RESULTS.md), so the fusion is opt-in."""
    spec = InputSpec("x", "float32", ("batch", "sequence", 16), -1.0, 1.0)
    dims = {"batch": DimRange(min=1, opt=2, max=8), "sequence": DimRange(min=2, opt=8, max=32)}
    ir = capture_model(ResidualNorm(), spec, dims)
    backend = OnnxRuntimeBackend(OrtOptions(intra_op_threads=1, skip_layernorm_fusion=fuse))
    artifact = backend.lower(ir, tmp_path)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.ort.onnx")).graph.node}
    assert ("SkipLayerNormalization" in ops) is fuse
    assert ("LayerNormalization" in ops) is not fuse
    # loading optimizes again: it must not fuse what lowering left apart
    seen = []
    session = onnxruntime.InferenceSession

    def spy(*args, **kwargs):
        seen.append(kwargs.get("disabled_optimizers") or [])
        return session(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    runner = backend.load(tmp_path, artifact)
    assert ("SkipLayerNormFusion" in seen[-1]) is not fuse
    x = torch.randn(2, 8, 16)
    np.testing.assert_allclose(runner.run({"x": x.numpy()})[0], ir.run({"x": x})[0], atol=1e-5)


def wide_model() -> torch.nn.Module:
    """Three 256-wide linears: the weights (0.8 MB in float32) are most of the files."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256)]
    return torch.nn.Sequential(*layers, torch.nn.GELU(), torch.nn.Linear(256, 8))


def initializer_types(path) -> dict[str, int]:
    """Elements per initializer type (inline or external) in the ONNX file at ``path``."""
    out: dict[str, int] = {}
    for tensor in onnx.load(str(path), load_external_data=False).graph.initializer:
        name = onnx.TensorProto.DataType.Name(tensor.data_type)
        out[name] = out.get(name, 0) + int(np.prod(tensor.dims))
    return out


def test_fp16_artifact_on_the_cpu_provider_is_no_larger_than_fp32(tmp_path):
    """At level all, ONNX Runtime's CPU provider (no fp16 kernels for most ops) stores fp16
    weights as float32 in model.ort.onnx: the artifact is saved at level extended, which keeps
    them half, and the session finishes the optimization when it loads it."""
    backend = OnnxRuntimeBackend(OrtOptions(intra_op_threads=1))
    deployed, everything, runs = {}, {}, {}
    x = torch.randn(5, 256)
    for dtype in ("fp32", "fp16"):
        ir = capture_module(wide_model(), features=256)
        if dtype == "fp16":
            CastFP16(CastConfig()).run(ir, context())
        out = tmp_path / dtype
        out.mkdir()
        artifact = backend.lower(ir, out)
        assert artifact.path == "model.ort.onnx"
        deployed[dtype] = sum((out / name).stat().st_size for name in artifact.info["deploy"])
        everything[dtype] = sum((out / name).stat().st_size for name in artifact.files)
        got = backend.load(out, Artifact.from_json(artifact.to_json())).run({"x": x.numpy()})[0]
        np.testing.assert_allclose(got, ir.run({"x": x})[0].float().numpy(), atol=1e-3)
        runs[dtype] = (artifact, got)
    assert deployed["fp16"] < 0.6 * deployed["fp32"], deployed
    assert everything["fp16"] < everything["fp32"], everything
    artifact, got = runs["fp16"]
    assert artifact.info["optimized_offline_at"].startswith("extended: at level all")
    types = initializer_types(tmp_path / "fp16" / "model.ort.onnx")
    assert types["FLOAT16"] > 50 * types.get("FLOAT", 0), types  # the weights stayed half
    assert np.abs(got - runs["fp32"][1]).max() < 0.05


def test_onnxruntime_missing_provider_is_unavailable():
    backend = OnnxRuntimeBackend(OrtOptions(providers=["NoSuchExecutionProvider"]))
    with pytest.raises(BackendUnavailableError, match="NoSuchExecutionProvider") as info:
        backend.check_available()
    assert info.value.exit_code == 4


def test_torch_backend_roundtrips_pt2(tmp_path):
    ir = capture_module(small_model())
    backend = TorchBackend(TorchOptions(onnx=False))
    artifact = backend.lower(ir, tmp_path)
    assert artifact.files == ["model.pt2"]
    runner = backend.load(tmp_path, artifact)
    assert runner.input_names == ["x"]
    for batch in (1, 9):
        x = torch.randn(batch, 8)
        np.testing.assert_allclose(
            runner.run({"x": x.numpy()})[0], ir.run({"x": x})[0].numpy(), atol=1e-6
        )


def test_torch_backend_cuda_without_gpu_is_unavailable():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        TorchBackend(TorchOptions(device="cuda")).check_available()
