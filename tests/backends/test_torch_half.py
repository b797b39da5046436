"""The torch backend with a half-precision IR: the device move it needs (checked on the CPU with
the ``meta`` device), and the CUDA fp16/bf16 runs themselves under ``-m gpu``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.loading import LoadOptions
from fxopt.engine.pass_base import PassContext
from fxopt.passes.cast import CastBF16, CastFP16
from fxopt.plugins.huggingface.loader import HuggingFaceLoader
from fxopt.plugins.torch.backend import TorchBackend, TorchOptions, on_device
from fxopt.run.capture import capture
from fxopt.run.recipe import parse_recipe


def named_devices(module: torch.fx.GraphModule) -> list[str]:
    """The devices the graph's nodes name in their arguments."""
    return [
        str(v)
        for n in module.graph.nodes
        for v in [*n.args, *n.kwargs.values()]
        if isinstance(v, (str, torch.device)) and str(v) in ("cpu", "meta")
    ]


@pytest.fixture(scope="module")
def bert_ir(tiny_bert_dir):
    loaded = HuggingFaceLoader().load(tiny_bert_dir, LoadOptions())
    loaded.dims = {"batch": DimRange(min=1, opt=4, max=8), "sequence": DimRange(min=2, max=32)}
    return capture(loaded, loaded.inputs, loaded.dims, source=str(tiny_bert_dir))


def cast(ir, pass_class=CastFP16, device="cpu"):
    recipe = parse_recipe({"target": {"backend": "torch", "options": {"device": device}}})
    ctx = PassContext(
        recipe, lambda s: [], lambda f: [], lambda i: {}, Path("."), Output(quiet=True)
    )
    return pass_class().run(copy.deepcopy(ir), ctx).ir


def feeds(ir) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(0, 1000, (4, 16))
    values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids * 0}
    return {name: values[name] for name in ir.input_names}


def test_device_move_rewrites_the_devices_the_graph_names(bert_ir, tmp_path):
    """Captured on the CPU, the graph says ``device=cpu`` (arange, to); a CUDA run needs them
    moved with the weights. ``meta`` stands in for ``cuda`` on a machine without a GPU."""
    backend = TorchBackend(TorchOptions(onnx=False))
    artifact = backend.lower(cast(bert_ir), tmp_path)
    program = torch.export.load(str(tmp_path / artifact.path))
    assert "cpu" in named_devices(program.module())
    moved = on_device(program, "meta").module()
    assert set(named_devices(moved)) == {"meta"}
    assert {p.device.type for p in moved.parameters()} == {"meta"}
    assert torch.float16 in {p.dtype for p in moved.parameters()}


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("pass_class", [CastFP16, CastBF16])
def test_half_ir_runs_on_cuda(bert_ir, tmp_path, pass_class):
    if pass_class is CastBF16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    backend = TorchBackend(TorchOptions(device="cuda", onnx=False))
    backend.check_available()
    artifact = backend.lower(cast(bert_ir, pass_class, "cuda"), tmp_path)
    runner = backend.load(tmp_path, artifact)
    inputs = feeds(bert_ir)
    (got,) = runner.run(inputs)
    (want,) = bert_ir.run({k: torch.from_numpy(v) for k, v in inputs.items()})
    want = want.numpy().reshape(len(got), -1)
    got = got.reshape(len(got), -1)
    cos = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > (0.999 if pass_class is CastFP16 else 0.99)
