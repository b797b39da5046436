"""``quantize.weight_only``: the packed layout, the op against ONNX Runtime's MatMulNBits,
GPTQ against round to nearest, and a tiny random Llama end to end from the command line."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fxopt.engine.errors import EXIT_USAGE
from fxopt.passes.quantize import QuantizeWeightOnly, WeightOnlyConfig, nbits
from fxopt.passes.quantize.gptq import Hessian, gptq_quantize, reconstruction_error
from fxopt.plugins.torch.backend import TorchBackend
from fxopt.testing import assert_conformant, sample_context, sample_ir
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import write_recipe
from tests.passes.quantize_support import Collecting, count_ops

VOCAB = 128
NBITS = "fxopt.matmul_nbits"


def ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# -- the packed layout -----------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_round_trip(bits):
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(0, 2**bits, (6, 96), generator=generator, dtype=torch.uint8)
    packed = nbits.pack_weight(q, bits, 32)
    assert packed.shape == (6, 3, 32 * bits // 8) and packed.dtype == torch.uint8
    assert torch.equal(nbits.unpack_weight(packed, bits, 96), q)
    if bits == 4:  # the first value of a pair in the low nibble
        assert int(packed[0, 0, 0]) == int(q[0, 0]) | (int(q[0, 1]) << 4)
    zero_points = torch.randint(0, 2**bits, (6, 3), generator=generator, dtype=torch.uint8)
    packed_zero = nbits.pack_zero_points(zero_points, bits)  # 3 blocks: odd for 4-bit
    assert packed_zero.shape == (6, -(-3 * bits // 8))
    assert torch.equal(nbits.unpack_zero_points(packed_zero, bits, 3), zero_points)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_round_to_nearest_is_onnxruntimes_quantizer_bit_for_bit(bits, symmetric):
    """The same scales, zero points and packed bytes as the quantizer behind
    onnxruntime.quantization.matmul_nbits_quantizer (MLAS), incl. an all-zero block."""
    state = pytest.importorskip("onnxruntime.capi._pybind_state")
    K, N, block = 256, 48, 32
    weight = torch.randn(N, K, generator=torch.Generator().manual_seed(1))
    weight[0, :block] = 0.0
    weight[1, block : 2 * block] = weight[1, block : 2 * block].abs()
    blocks = K // block
    packed = np.zeros((N, blocks, block * bits // 8), np.uint8)
    zero_points = np.zeros((N, -(-blocks * bits // 8)), np.uint8)
    scales = np.zeros((N, blocks), np.float32)
    quantize = state.quantize_matmul_4bits if bits == 4 else state.quantize_matmul_8bits
    quantize(packed, weight.T.contiguous().numpy(), scales, zero_points, block, N, K, symmetric)

    q, my_scales, my_zero = nbits.quantize_rtn(weight, bits, block, symmetric)
    assert np.array_equal(nbits.pack_weight(q, bits, block).numpy(), packed)
    assert np.array_equal(my_scales.numpy(), scales)
    if not symmetric:
        assert np.array_equal(nbits.pack_zero_points(my_zero, bits).numpy(), zero_points)


@pytest.mark.parametrize("symmetric", [True, False])
def test_round_to_nearest_a_few_rows_at_a_time_gives_the_same_numbers(monkeypatch, symmetric):
    """Rows are rounded in chunks (an LM head at once would hold GBs of temporaries): each
    row's blocks are its own, so the chunks, the last one short, change nothing."""
    weight = torch.randn(48, 256, generator=torch.Generator().manual_seed(2))
    whole = nbits.quantize_rtn(weight, 4, 32, symmetric)
    monkeypatch.setattr(nbits, "ROUND_ELEMENTS", 5 * 256)  # 5 rows at a time, then 3
    for at_once, chunked in zip(whole, nbits.quantize_rtn(weight, 4, 32, symmetric), strict=True):
        assert torch.equal(at_once, chunked)


# -- the op against ONNX Runtime ---------------------------------------------------------------


def matmul_nbits_model(K, N, bits, block, tensors: dict[str, np.ndarray], accuracy_level=0):
    """A one-node ONNX model: ``Y = MatMulNBits(A, ...)`` with the given constants."""
    order = ["B", "scales", "zero_points", "g_idx", "bias"]
    last = max(order.index(name) for name in tensors)
    inputs = ["A"] + [name if name in tensors else "" for name in order[: last + 1]]
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        ["Y"],
        domain="com.microsoft",
        K=K,
        N=N,
        bits=bits,
        block_size=block,
        accuracy_level=accuracy_level,
    )
    graph = helper.make_graph(
        [node],
        "matmul_nbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])],
        initializer=[numpy_helper.from_array(v, name) for name, v in tensors.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("K", [384, 344], ids=["blocks-divide-k", "last-block-padded"])
@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_op_equals_onnxruntime_matmulnbits(bits, symmetric, block, K):
    N = 40
    generator = torch.Generator().manual_seed(bits * 1000 + block + symmetric)
    weight = torch.randn(N, K, generator=generator)
    bias = torch.randn(N, generator=generator) if block != 64 else None
    x = torch.randn(7, K, generator=generator)
    padded = nbits.pad_to_blocks(weight, block)
    q, scales, zero_points = nbits.quantize_rtn(padded, bits, block, symmetric)
    packed = nbits.pack_weight(q, bits, block)
    packed_zero = None if symmetric else nbits.pack_zero_points(zero_points, bits)
    ours = nbits.matmul_nbits(x, packed, scales, packed_zero, bias, K, N, bits, block, 0)

    tensors = {"B": packed.numpy(), "scales": scales.numpy()}
    if packed_zero is not None:
        tensors["zero_points"] = packed_zero.numpy()
    if bias is not None:
        tensors["bias"] = bias.numpy()
    session = ort_session(matmul_nbits_model(K, N, bits, block, tensors))
    theirs = session.run(None, {"A": x.numpy()})[0]
    # float32 sums in another order: measured max |diff| <= 4.4e-5 at |y| ~ 60 (7.6e-7 of it)
    assert np.abs(theirs - ours.numpy()).max() <= 1e-5 * np.abs(theirs).max()
    # and the op computes linear() with the dequantized weight
    dequantized = nbits.dequantize_values(q, scales, zero_points, block)[:, :K]
    assert torch.allclose(ours, nn.functional.linear(x, dequantized, bias), atol=1e-5)


# -- GPTQ --------------------------------------------------------------------------------------


def test_gptq_reconstructs_a_layer_better_than_round_to_nearest():
    """The layer-wise objective ||W X - Q X||^2 on the same layer and calibration tokens
    (correlated inputs, as a model's are); held-out tokens from the same distribution too."""
    generator = torch.Generator().manual_seed(0)
    N, K = 96, 256
    weight = torch.randn(N, K, generator=generator)
    mixing = torch.randn(K, K, generator=generator) / K**0.5

    def tokens(count):
        return torch.randn(count, K, generator=generator) @ mixing

    calibration, held_out = Hessian(K), Hessian(K)
    calibration.add(tokens(512))
    calibration.add(tokens(512))
    held_out.add(tokens(1024))
    for bits, symmetric in ((4, True), (4, False), (8, True)):
        rtn = nbits.dequantize_values(*nbits.quantize_rtn(weight, bits, 32, symmetric), 32)
        gptq = nbits.dequantize_values(
            *gptq_quantize(weight, calibration.matrix, bits, 32, symmetric), 32
        )
        for H in (calibration.matrix, held_out.matrix):
            # measured: int4 ~0.0037 vs 0.0073 (calibration), ~0.0043 vs 0.0073 (held out)
            assert reconstruction_error(weight, gptq, H) < 0.75 * reconstruction_error(
                weight, rtn, H
            )


def test_hessian_is_the_mean_outer_product():
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    hessian = Hessian(8)
    hessian.add(x[:30])
    hessian.add(x[30:].reshape(7, 10, 8))
    assert torch.allclose(hessian.matrix, 2 * x.double().T @ x.double() / 100)


# -- the pass on small graphs ------------------------------------------------------------------


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.down = nn.Linear(96, 32, bias=False)
        self.lm_head = nn.Linear(32, 64)

    def forward(self, x):
        return (self.lm_head(self.down(torch.relu(self.up(x)))),)


def mlp_ir():
    return sample_ir(Mlp(), features=64)


def run_pass(ir, **config):
    ctx = sample_context(ir)
    ctx.output = Collecting()
    return QuantizeWeightOnly(WeightOnlyConfig(**config)).run(ir, ctx), ctx


def test_conformant():
    for config in ({"bits": 4}, {"bits": 8, "method": "gptq", "symmetric": False}):
        ir = mlp_ir()
        assert_conformant(QuantizeWeightOnly, config, ir=ir, ctx=sample_context(ir))


def test_linears_become_the_op_and_the_graph_computes_the_quantized_weights():
    ir = mlp_ir()
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = ir.module(x)[0]
    weights = {name: p.detach().clone() for name, p in ir.module.named_parameters()}
    result, _ = run_pass(ir, bits=4, exclude=["down"])
    metrics = result.metrics
    assert metrics["quantized"] == 1 and metrics["excluded"] == ["down"]
    assert metrics["lm_head"] == {"lm_head": "kept in float32 (lm_head = 'keep')"}
    assert count_ops(ir, NBITS) == 1 and count_ops(ir, "aten.linear") == 2
    # 96 x 64 float32 -> 4-bit values + one float32 scale per 32
    assert metrics["weight_bytes"] == {"float32": 96 * 64 * 4, "quantized": 96 * 32 + 96 * 2 * 4}
    assert metrics["ir_bytes"]["after"] < metrics["ir_bytes"]["before"]
    assert "up.weight" not in dict(ir.module.named_parameters())  # the float weight is gone
    # the graph computes exactly linear() with the dequantized weight
    q, scales, zero = nbits.quantize_rtn(weights["up.weight"], 4, 32, True)
    up = nn.functional.linear(x, nbits.dequantize_values(q, scales, zero, 32), weights["up.bias"])
    down = nn.functional.linear(torch.relu(up), weights["down.weight"])
    expected = nn.functional.linear(down, weights["lm_head.weight"], weights["lm_head.bias"])
    with torch.no_grad():
        after = ir.module(x)[0]
    assert torch.allclose(after, expected, atol=1e-5) and not torch.allclose(after, before)


def test_lm_head_policy():
    ir = mlp_ir()
    result, _ = run_pass(ir, bits=4, lm_head="int8")
    assert result.metrics["lm_head"] == {"lm_head": "int8"}
    assert result.metrics["quantized_bits"] == {"int4": 2, "int8": 1}
    bits = sorted(n.args[7] for n in ir.graph.nodes if n.target == nbits.MATMUL_NBITS)
    assert bits == [4, 4, 8]


@pytest.mark.parametrize("block", [32, 64], ids=["blocks-divide-k", "down-padded"])
def test_gptq_pass_reports_lower_error_than_rtn_for_every_layer(block):
    ir = mlp_ir()  # down reads 96 features: blocks of 64 pad its last one
    result, _ = run_pass(ir, bits=4, method="gptq", lm_head="same", block_size=block)
    gptq = result.metrics["gptq"]
    assert gptq["samples"] == 16 and set(gptq["layer_errors"]) == {"up", "down", "lm_head"}
    for layer, errors in gptq["layer_errors"].items():
        assert errors["gptq"] < errors["rtn"], layer
    padded = {"down": 96, "lm_head": 32} if block == 64 else {}  # K = 96 and 32
    assert result.metrics.get("padded_last_block", {}) == padded


def test_torch_backend_runs_the_quantized_graph(tmp_path):
    """The .pt2 the torch backend writes holds the op; it loads and runs its CPU kernel."""
    ir = mlp_ir()
    run_pass(ir, bits=8, symmetric=False)
    backend = TorchBackend(TorchBackend.Options(onnx=False))
    artifact = backend.lower(ir, tmp_path)
    runner = backend.load(tmp_path, artifact)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(4))
    got = runner.run({"x": x.numpy()})[0]
    with torch.no_grad():
        want = ir.module(x)[0].numpy()
    assert np.allclose(got, want, atol=1e-6)


def test_a_block_size_that_does_not_divide_k_pads_the_last_block_and_says_so():
    ir = sample_ir()  # fc1 reads 16 features, fc2 32
    x = torch.randn(3, *ir.example_inputs[0].shape[1:])
    with torch.no_grad():
        want = ir.module(x)[0]
    result, _ = run_pass(ir, block_size=64)
    assert result.metrics["padded_last_block"] == {"fc1": 16, "fc2": 32}
    assert count_ops(result.ir, NBITS) == 2
    with torch.no_grad():
        got = result.ir.module(x)[0]
    assert nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99


# -- a tiny random Llama from the command line -------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).eval().save_pretrained(path, safe_serialization=True)
    return path


#: q, k, v, o, gate, up, down in each of 2 layers
LINEARS = 14


def llama_recipe(tmp_path, config: dict, *, calibration: bool = True):
    data = {"verification": {"source": "synthetic", "samples": 8, "batch_size": 4}}
    if calibration:
        data["calibration"] = {"source": "synthetic", "samples": 16, "batch_size": 4}
    for split in data.values():
        split["sequence_length"] = 16
    body = {
        "schema_version": 1,
        "model": {
            "task": "causal-lm",
            "dims": {
                "batch": {"min": 1, "opt": 4, "max": 4},
                "sequence": {"min": 2, "opt": 16, "max": 32},
            },
        },
        "data": data,
        "passes": [{"name": "quantize.weight_only", "config": config}],
        "target": {"backend": "onnxruntime"},
        "verify": {"min_cosine": 0.9, "latency": False, "pass_samples": 0},
    }
    return write_recipe(tmp_path, body)


def float_weight_matmuls(model: onnx.ModelProto) -> int:
    """MatMul / Gemm nodes that read a float initializer (a float weight)."""
    floats = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    return sum(
        1
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and any(i in floats for i in node.input)
    )


@pytest.mark.parametrize(
    ("config", "min_cosine"),
    [
        # measured 0.9979 (8 synthetic sequences), 0.9954 on 64
        ({"bits": 4}, 0.98),
        # measured 0.99999
        ({"bits": 8, "method": "gptq", "symmetric": False, "lm_head": "int8"}, 0.999),
    ],
    ids=["int4-rtn", "int8-gptq-asym"],
)
def test_cli_tiny_llama_lowers_to_matmulnbits(capsys, tmp_path, llama_dir, config, min_cosine):
    out = tmp_path / "out"
    result = run_cli(capsys, llama_recipe(tmp_path, config), llama_dir, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    metrics = next(p for p in report["passes"] if p["name"] == "quantize.weight_only")["metrics"]
    head = config.get("lm_head", "keep") != "keep"
    assert metrics["quantized"] == LINEARS + head

    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == LINEARS + head and all(n.domain == "com.microsoft" for n in nodes)
    # the one float weight a MatMul still reads is the head's, when it is kept
    assert float_weight_matmuls(model) == (0 if head else 1)
    attributes = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attributes["bits"] == config["bits"] and attributes["block_size"] == 32
    has_zero_points = len(nodes[0].input) > 3 and nodes[0].input[3] != ""
    assert has_zero_points == (not config.get("symmetric", True))
    optimized = onnx.load(str(out / "model.ort.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in optimized.graph.node)
    assert ops["MatMulNBits"] == LINEARS + head

    # the weights file: the float model's bytes, less the linears' float32, plus their packing
    fp32 = sum(p.stat().st_size for p in llama_dir.glob("*.safetensors"))
    weights = metrics["weight_bytes"]
    expected = fp32 - weights["float32"] + weights["quantized"]
    data = (out / "model.onnx.data").stat().st_size
    assert abs(data - expected) < 0.03 * fp32, (data, expected, fp32)
    assert data < 0.45 * fp32
    assert report["verify"]["metrics"]["cosine_mean"] >= min_cosine
    if config.get("method") == "gptq":
        for layer, errors in metrics["gptq"]["layer_errors"].items():
            assert errors["gptq"] < errors["rtn"], layer


@pytest.mark.parametrize(
    ("config", "calibration", "needles"),
    [
        (
            {"bits": 3},
            True,
            ["recipe.toml: passes[0].config.bits: must be 4 or 8 (got 3)", "fix: bits = 4"],
        ),
        (
            {"exclude": ["*.attn.*"]},
            True,
            [
                "passes[0].config.exclude",
                "exclude pattern '*.attn.*' matches no linear; candidates: "
                "model.model.layers.0.self_attn.q_proj",
            ],
        ),
        (
            {"method": "gptq"},
            False,
            [
                "data.calibration",
                "needs a calibration set (method = 'gptq' reconstructs each layer",
                "add a [data.calibration] table",
            ],
        ),
    ],
    ids=["bits-3", "exclude-matches-nothing", "gptq-without-data"],
)
def test_cli_bad_configs_fail_cleanly(capsys, tmp_path, llama_dir, config, calibration, needles):
    recipe = llama_recipe(tmp_path, config, calibration=calibration)
    result = run_cli(capsys, recipe, llama_dir, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, *needles)
    if not calibration:  # a missing data set is known from the recipe: before any work
        assert "capturing" not in result.err
    assert not (tmp_path / "out").exists()
