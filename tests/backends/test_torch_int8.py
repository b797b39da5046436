"""The torch backend on Q/DQ graphs: the uint8 rewrite keeps the numbers, the ``.pt2`` loads
in a fresh process, and (slow) inductor lowers every quantized linear to a oneDNN int8 kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.plugins.torch.backend import TorchBackend, TorchOptions
from fxopt.plugins.torch.int8 import activations_to_uint8, is_quantized
from tests.passes.quantize_support import TwoBranch, batches, context, make_ir


@pytest.fixture
def quantized(tmp_path):
    ir = make_ir(TwoBranch())
    QuantizeInt8(Int8Config()).run(ir, context(ir, tmp_path / "cache"))
    return ir


def test_uint8_rewrite_computes_the_same_numbers(quantized):
    x = batches(seed=9)[0]["x"]
    with torch.no_grad():
        before = quantized.module(x)[0]
        changed = activations_to_uint8(quantized.module)
        after = quantized.module(x)[0]
    # two activation tensors, each a quantize and a dequantize per consumer (a, b share x)
    assert changed == 5
    assert torch.equal(before, after)
    dtypes = {
        n.args[5]
        for n in quantized.graph.nodes
        if str(n.target).startswith("quantized_decomposed.quantize_per_tensor")
    }
    assert dtypes == {torch.uint8}


def test_pt2_loads_in_a_fresh_process(quantized, tmp_path):
    backend = TorchBackend(TorchOptions(onnx=False))
    artifact = backend.lower(quantized, tmp_path)
    assert artifact.info["quantized"] is True and is_quantized(quantized.module)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        import numpy as np
        from fxopt.engine.backend import Artifact
        from fxopt.plugins.torch.backend import TorchBackend, TorchOptions
        artifact = Artifact.from_json({artifact.to_json()!r})
        runner = TorchBackend(TorchOptions(onnx=False)).load(Path({str(tmp_path)!r}), artifact)
        print(runner.run({{"x": np.ones((2, 8), np.float32)}})[0].shape)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(2, 4)")


@pytest.mark.slow
def test_compiled_runner_uses_onednn_int8_kernels(quantized, tmp_path):
    from torch._inductor.utils import run_and_get_code

    backend = TorchBackend(TorchOptions(compile=True, onnx=False))
    artifact = backend.lower(quantized, tmp_path)
    runner = backend.load(tmp_path, artifact)  # compiles for the example shape (4, 8)
    x = batches(seed=9)[0]["x"][:4]
    with torch.no_grad():
        expected = quantized.module(x)[0].numpy()
        torch._dynamo.reset()
        out, code = run_and_get_code(runner.module, x)
    assert "\n".join(code).count("onednn.qlinear_pointwise") == 3
    assert np.abs(out[0].numpy() - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
