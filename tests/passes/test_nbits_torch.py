"""The torch backend's int4 path: ``fxopt::matmul_nbits`` rewritten at load time to torch's
int4 CPU kernel (``fxopt::matmul_int4pack``, :mod:`fxopt.passes.quantize.nbits_torch`).

The kernel computes in bfloat16 (activations, scales, zeros and its output rounded to it):
against the float32 reference kernel its outputs differ by at most ~0.41% of the largest
output (measured on these shapes, symmetric and asymmetric, blocks 32/64/128), some 20-50x
below the int4 rounding error itself; the bound asserted is 2^-7 of it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fxopt.passes.quantize import QuantizeWeightOnly, WeightOnlyConfig, nbits
from fxopt.passes.quantize.nbits_torch import (
    kernel_available,
    matmul_int4pack,
    to_int4pack,
    use_int4_kernel,
)
from fxopt.plugins.torch.backend import TorchBackend
from fxopt.testing import sample_context, sample_ir
from fxopt.testing.language_models import RECIPE as TINY
from tests.conftest import merged, write_recipe
from tests.passes.quantize_support import Collecting

needs_kernel = pytest.mark.skipif(
    kernel_available() is not None, reason=f"torch's int4 kernel: {kernel_available()}"
)

#: bfloat16 compute: |fast - reference| <= this x max |reference| (measured <= 0.0041)
RELATIVE = 2**-7


def quantized(N, K, block, symmetric, seed=0):
    """A random ``[N, K]`` weight rounded to 4 bits: (packed, scales, packed zero points)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(N, K, generator=generator) * 0.05
    q, scales, zero_points = nbits.quantize_rtn(
        nbits.pad_to_blocks(weight, block), 4, block, symmetric
    )
    packed_zero = None if symmetric else nbits.pack_zero_points(zero_points, 4)
    return nbits.pack_weight(q, 4, block), scales, packed_zero


@needs_kernel
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("block", [32, 64, 128])
# K = 96 and 200 leave a padded last block; N = 40 and 24 are padded to a multiple of 16
@pytest.mark.parametrize(("N", "K"), [(64, 128), (48, 96), (40, 200), (24, 256), (896, 896)])
def test_the_fast_kernel_equals_the_reference_within_bfloat16(symmetric, block, N, K):
    packed, scales, zero_points = quantized(N, K, block, symmetric)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, K, generator=generator)
    bias = torch.randn(N, generator=generator)
    want = nbits.matmul_nbits(x, packed, scales, zero_points, bias, K, N, 4, block, 0)
    weight, scales_and_zeros = to_int4pack(packed, scales, zero_points, K, N, block)
    assert weight.dtype == torch.uint8 and scales_and_zeros.dtype == torch.bfloat16
    got = matmul_int4pack(x, weight, scales_and_zeros, bias, K, N, block)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max() <= RELATIVE * want.abs().max()
    cosine = nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cosine > 0.99999


@needs_kernel
def test_packing_a_few_rows_at_a_time_gives_the_same_layout(monkeypatch):
    packed, scales, zero_points = quantized(1040, 128, 32, False)
    whole = to_int4pack(packed, scales, zero_points, 128, 1040, 32)
    monkeypatch.setattr("fxopt.passes.quantize.nbits_torch.PACK_ELEMENTS", 64 * 128)
    chunked = to_int4pack(packed, scales, zero_points, 128, 1040, 32)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))


@needs_kernel
def test_no_rows_and_bfloat16_activations():
    packed, scales, zero_points = quantized(32, 64, 32, True)
    weight, scales_and_zeros = to_int4pack(packed, scales, zero_points, 64, 32, 32)
    empty = matmul_int4pack(torch.zeros(0, 64), weight, scales_and_zeros, None, 64, 32, 32)
    assert empty.shape == (0, 32)
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    got = matmul_int4pack(x, weight, scales_and_zeros, None, 64, 32, 32)
    want = nbits.matmul_nbits(x.float(), packed, scales, zero_points, None, 64, 32, 4, 32, 0)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 2 * RELATIVE * want.abs().max()


# -- the torch backend ---------------------------------------------------------------------


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.down = nn.Linear(96, 40, bias=False)  # K = 96: a padded last block at 64

    def forward(self, x):
        return (self.down(torch.relu(self.up(x))),)


def quantized_ir(**config):
    ir = sample_ir(Mlp(), features=64)
    ctx = sample_context(ir)
    ctx.output = Collecting()
    return QuantizeWeightOnly(WeightOnlyConfig(**config)).run(ir, ctx).ir


def targets(module) -> list[str]:
    return [str(n.target) for n in module.graph.nodes if n.op == "call_function"]


@needs_kernel
@pytest.mark.parametrize(
    "config",
    [{"bits": 4}, {"bits": 4, "symmetric": False, "block_size": 64}],
    ids=["sym-32", "asym-64"],
)
def test_loading_rewrites_4_bit_ops_and_keeps_the_pt2_portable(tmp_path, config):
    ir = quantized_ir(**config)
    backend = TorchBackend(TorchBackend.Options(onnx=False))
    artifact = backend.lower(ir, tmp_path)
    saved = torch.export.load(str(tmp_path / artifact.path)).module()
    assert targets(saved).count("fxopt.matmul_nbits.default") == 2  # the layout ORT reads

    runner = backend.load(tmp_path, artifact)
    module = runner.module
    assert targets(module).count("fxopt.matmul_int4pack.default") == 2
    assert "fxopt.matmul_nbits.default" not in targets(module)
    # the ONNX Runtime layout's constants are gone: no weight is held twice
    names = [name for name, _ in module.named_buffers()]
    assert not [n for n in names if n.endswith(("_q4", "_scales", "_zero_points"))], names
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(4))
    got = runner.run({"x": x.numpy()})[0]
    with torch.no_grad():
        want = ir.module(x)[0].numpy()
    assert np.abs(got - want).max() <= 2 * RELATIVE * np.abs(want).max()


def test_8_bit_blocks_keep_the_reference_kernel(tmp_path):
    ir = quantized_ir(bits=8)
    backend = TorchBackend(TorchBackend.Options(onnx=False))
    runner = backend.load(tmp_path, backend.lower(ir, tmp_path))
    assert targets(runner.module).count("fxopt.matmul_nbits.default") == 2
    assert use_int4_kernel(runner.module) == 0


def test_an_unvectorized_cpu_keeps_the_reference_kernel(tmp_path, monkeypatch):
    ir = quantized_ir(bits=4)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert kernel_available() == (
        "CPU capability DEFAULT: torch's int4 kernel is not vectorized there"
    )
    backend = TorchBackend(TorchBackend.Options(onnx=False))
    runner = backend.load(tmp_path, backend.lower(ir, tmp_path))
    assert "fxopt.matmul_int4pack.default" not in targets(runner.module)
    assert targets(runner.module).count("fxopt.matmul_nbits.default") == 2


# -- end to end: a tiny Llama, int4 on the torch backend -----------------------------------

RECIPE = merged(
    TINY,
    {
        "passes": [{"name": "quantize.weight_only", "config": {"bits": 4, "block_size": 32}}],
        "target": {"backend": "torch", "options": {"onnx": False}},
        "verify": {"min_cosine": 0.95, "pass_samples": 0},
    },
)

FRESH_LOAD = """
import json, sys
from pathlib import Path
import numpy as np
from fxopt.run.output_dir import load_output
from fxopt.engine.console import Output
from fxopt.engine.plugin_host import load_plugins

runner = load_output(Path(sys.argv[1]), load_plugins(), Output(quiet=True)).runner
feeds = {k: v for k, v in np.load(sys.argv[2]).items()}
np.save(sys.argv[3], runner.run(feeds)[0])
ops = [str(n.target) for n in runner.module.graph.nodes if n.op == "call_function"]
print(json.dumps({"int4pack": ops.count("fxopt.matmul_int4pack.default"),
                  "nbits": ops.count("fxopt.matmul_nbits.default")}))
"""


@needs_kernel
def test_a_tiny_llama_runs_int4_on_the_torch_backend(tmp_path, monkeypatch):
    from fxopt.cli import main
    from fxopt.engine.console import Output
    from fxopt.engine.plugin_host import load_plugins
    from fxopt.run.output_dir import load_output
    from fxopt.testing.language_models import save_causal_lm

    model = save_causal_lm(tmp_path / "model", "llama")
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, RECIPE)
    monkeypatch.setenv("FXOPT_CACHE_DIR", str(tmp_path / "cache"))
    assert main([str(recipe), str(model), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    budget = report["verify"]["budget"]
    assert budget and all(b["passed"] for b in budget), report["verify"]
    passes = {p["name"]: p["metrics"] for p in report["passes"]}
    assert passes["quantize.weight_only"]["quantized"] == 14  # q k v o gate up down, x2

    runner = load_output(out, load_plugins(), Output(quiet=True)).runner
    ops = targets(runner.module)
    assert ops.count("fxopt.matmul_int4pack.default") == 14
    assert "fxopt.matmul_nbits.default" not in ops

    # a fresh process loads the .pt2 (its ops registered by importing fxopt) and packs the
    # weights the same way: the same numbers
    feeds = {
        "input_ids": np.array([[5, 17, 42, 7]], dtype=np.int64),
        "attention_mask": np.ones((1, 4), dtype=np.int64),
        "position_ids": np.arange(4, dtype=np.int64)[None],
    }
    for name in runner.input_names:
        if name.startswith("past_key_values"):
            feeds[name] = np.zeros((1, 2, 0, 16), dtype=np.float32)
    np.savez(tmp_path / "feeds.npz", **feeds)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(out), tmp_path / "feeds.npz", tmp_path / "y.npy"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"int4pack": 14, "nbits": 0}
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), runner.run(feeds)[0])

    # and close to the op's own float32 kernel, the .pt2 run as saved
    saved = torch.export.load(str(out / "model.pt2")).module()
    with torch.no_grad():
        want = saved(*(torch.from_numpy(feeds[n]) for n in runner.input_names))[0].numpy()
    got = runner.run(feeds)[0]
    cosine = float(np.dot(got.ravel(), want.ravel()))
    cosine /= float(np.linalg.norm(got) * np.linalg.norm(want))
    assert cosine > 0.9999, cosine
