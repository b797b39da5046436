"""The rewrite: exact parameter counts, shape constants for dynamic sizes, exact numbers.

Removing an FFN neuron or an attention head is the same function as zeroing its column of
the projection that consumes it, so the pruned graph must match the unpruned eager model with
those columns zeroed, to float precision.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fxopt.engine.specs import InputSpec
from fxopt.passes.prune.config import PruneConfig
from fxopt.passes.prune.structured import StructuredPrune
from fxopt.plugins.onnx.export import export_onnx
from tests.passes.prune_models import (
    BATCH,
    SEQUENCE,
    bert_ir,
    capture_model,
    cnn_ir,
    context,
    gpt2_ir,
    gpt2_lm_ir,
    inputs_for,
    vit_ir,
)

SIZES = [(1, 2), (3, 17), (16, 32)]


def prune(ir, **config):
    ctx = context()
    result = StructuredPrune(PruneConfig(**config)).run(ir, ctx)
    return result, ctx.output.warnings


def params(ir) -> dict[str, torch.Tensor]:
    return dict(ir.module.named_parameters())


def kept_rows(before: torch.Tensor, after: torch.Tensor, axis: int = 0) -> list[int]:
    """Which slices of ``before`` along ``axis`` survive in ``after`` (exact matches)."""
    old, new = before.movedim(axis, 0).flatten(1), after.movedim(axis, 0).flatten(1)
    return [int(torch.nonzero((old == row).all(dim=1))[0]) for row in new]


def run_at(ir, batch: int, sequence: int) -> torch.Tensor:
    (out,) = ir.run(inputs_for(ir, batch, sequence))
    return out


class ExplicitHeads(nn.Module):
    """Attention written with the head count as a constant: ``view(b, s, 4, 8)``, a merge
    back to ``(b, s, 32)``, and (``manual``) matmul + softmax instead of SDPA."""

    def __init__(self, manual: bool) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
        self.manual = manual

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (lin(x).view(b, s, 4, 8).transpose(1, 2) for lin in (self.q, self.k, self.v))
        if self.manual:
            weights = torch.softmax(q @ k.transpose(-2, -1) * 8**-0.5, dim=-1)
            context_ = weights @ v
        else:
            context_ = nn.functional.scaled_dot_product_attention(q, k, v)
        h = x + self.o(context_.transpose(1, 2).reshape(b, s, 32))
        return (h + self.down(torch.relu(self.up(h))),)


@pytest.mark.parametrize("manual", [False, True], ids=["sdpa", "matmul"])
def test_head_count_constants_are_rewritten_for_dynamic_sequence_lengths(manual):
    torch.manual_seed(0)
    model = ExplicitHeads(manual).eval()
    spec = InputSpec("x", "float32", ("batch", "sequence", 32), -1.0, 1.0)
    ir = capture_model(model, spec, {"batch": BATCH, "sequence": SEQUENCE})
    result, _ = prune(ir, heads=0.25, ffn=0.5)
    assert result.metrics["pruned"] == {"heads": "1 groups: 4 -> 3", "ffn": "1 groups: 64 -> 32"}
    shapes = [
        list(n.args[1]) for n in result.ir.graph.nodes if str(n.target) == "aten.view.default"
    ]
    assert all(shape[2:] == [3, 8] for shape in shapes if len(shape) == 4)
    reshapes = [n for n in result.ir.graph.nodes if str(n.target) == "aten.reshape.default"]
    assert [n.args[1][-1] for n in reshapes] == [24]
    for batch, sequence in SIZES:
        x = torch.rand(batch, sequence, 32) * 2 - 1
        (out,) = result.ir.run({"x": x})
        assert out.shape == (batch, sequence, 32)
        assert torch.isfinite(out).all()


def test_gpt2_fused_qkv_split_and_views_follow_the_pruned_sizes():
    _, ir = gpt2_ir(layers=2)
    result, _ = prune(ir, heads=0.25, ffn=0.5)
    graph = result.ir.graph
    splits = [n for n in graph.nodes if str(n.target) == "aten.split_with_sizes.default"]
    assert [n.args[1] for n in splits] == [[48, 48, 48], [48, 48, 48]]
    view_sizes = {n.args[1][-1] for n in graph.nodes if str(n.target) == "aten.view.default"}
    assert {144, 128} <= view_sizes and not {192, 256} & view_sizes
    assert result.ir.meta.config["n_head"] == 3
    assert result.ir.meta.config["n_inner"] == 128
    assert result.ir.meta.config["head_dim"] == 16
    for batch, sequence in SIZES:
        out = run_at(result.ir, batch, sequence)
        assert out.shape == (batch, sequence, 64)
        assert torch.isfinite(out).all()


def test_hidden_width_is_pruned_only_when_asked_and_tied_weights_stay_tied():
    """GPT-2 with its LM head: the residual stream feeds the tied embedding / LM-head weight."""
    _, ir = gpt2_lm_ir()
    result, _ = prune(ir, ratio=0.25)
    assert "hidden" not in result.metrics["pruned"]
    _, ir = gpt2_lm_ir()
    result, _ = prune(ir, hidden=0.25)
    assert result.metrics["pruned"] == {"hidden": "1 groups: 64 -> 48"}
    graph = result.ir.graph
    token_embedding = next(
        n.args[0] for n in graph.nodes if str(n.target) == "aten.embedding.default"
    )
    lm_head = [n for n in graph.nodes if str(n.target) == "aten.linear.default"][-1].args[1]
    assert token_embedding.target == lm_head.target  # still one tensor
    assert dict(result.ir.module.named_parameters())[lm_head.target].shape == (100, 48)
    norms = [n for n in result.ir.graph.nodes if str(n.target) == "aten.layer_norm.default"]
    assert {tuple(n.args[1]) for n in norms} == {(48,)}
    assert result.ir.meta.config["n_embd"] == 48
    for batch, sequence in SIZES:
        out = run_at(result.ir, batch, sequence)
        assert out.shape == (batch, sequence, 100) and torch.isfinite(out).all()


def test_bert_parameter_count_and_numbers_match_zeroed_columns():
    eager, ir = bert_ir()
    original = {k: v.detach().clone() for k, v in params(ir).items()}
    before = ir.parameter_count()
    result, _ = prune(ir, heads=0.25, ffn=0.5)
    pruned = params(result.ir)
    # q, k, v lose one head of 16 rows (+ bias), the output projection 16 columns;
    # the FFN loses 64 neurons: 64 rows (+ bias) in, 64 columns out
    expected = 3 * (16 * 64 + 16) + 64 * 16 + (64 * 64 + 64) + 64 * 64
    assert result.metrics["params_before"] == before
    assert result.metrics["params_after"] == result.ir.parameter_count() == before - expected

    layer = "m.encoder.layer.0"
    query = f"{layer}.attention.self.query.weight"
    inter = f"{layer}.intermediate.dense.weight"
    heads = sorted({r // 16 for r in kept_rows(original[query], pruned[query])})
    neurons = kept_rows(original[inter], pruned[inter])
    assert len(heads) == 3 and len(neurons) == 64

    zeroed = copy.deepcopy(eager)
    attention_out = zeroed.m.encoder.layer[0].attention.output.dense.weight
    ffn_out = zeroed.m.encoder.layer[0].output.dense.weight
    with torch.no_grad():
        for head in set(range(4)) - set(heads):
            attention_out[:, head * 16 : (head + 1) * 16] = 0
        ffn_out[:, sorted(set(range(128)) - set(neurons))] = 0
    for batch, sequence in SIZES:
        feeds = inputs_for(ir, batch, sequence)
        (got,) = result.ir.run(feeds)
        with torch.no_grad():
            (want,) = zeroed(feeds["x"])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_cnn_channels_with_batchnorm_residual_and_depthwise_conv():
    _, ir = cnn_ir()
    before = ir.parameter_count()
    result, _ = prune(ir, conv=0.5, round_to=4)
    assert result.metrics["pruned"] == {"conv": "3 groups: 16..32 -> 8..16"}
    # stem: 8 of 16 out (9+1 each) and BN (2 each); block.c1 in/out and c2 in/out (9 each),
    # b1/b2 (2 each); down: 8 in of (16 -> 32 out), 16 of 32 out; dw 16 of 32 (9+1); fc1 in
    removed = (
        8 * 10
        + 8 * 2  # stem + bn
        + (16 * 16 - 8 * 8) * 9
        + 8 * 2  # block.c1 (both sides) + b1
        + (16 * 16 - 8 * 8) * 9
        + 8 * 2  # block.c2 + b2
        + (32 * 16 - 16 * 8) * 9
        + 16  # down weights + bias
        + 16 * 10  # depthwise conv
        + 16 * 24  # fc1 in-features
    )
    assert result.metrics["params_after"] == before - removed
    groups = [n for n in result.ir.graph.nodes if str(n.target) == "aten.conv2d.default"]
    assert groups[-1].args[6] == 16  # the depthwise conv's groups constant follows
    buffers = dict(result.ir.module.named_buffers())
    assert buffers["block.b1.running_mean"].shape == (8,)
    for batch in (1, 5, 16):
        (out,) = result.ir.run({"x": torch.randn(batch, 1, 8, 8)})
        assert out.shape == (batch, 10) and torch.isfinite(out).all()


def test_cnn_numbers_match_zeroed_input_channels_of_the_consumers():
    """Removing residual-stream and inner channels equals zeroing them where they are read."""
    eager, ir = cnn_ir()
    result, _ = prune(ir, conv=0.5, ignore=["down"])
    assert result.metrics["ignored"] == ["down"]
    pruned = dict(result.ir.module.named_parameters())
    stem = kept_rows(eager.stem.weight, pruned["stem.weight"])
    inner = kept_rows(eager.block.c1.weight[:, stem], pruned["block.c1.weight"])
    assert len(stem) == len(inner) == 8
    zeroed = copy.deepcopy(eager)
    with torch.no_grad():
        dropped = sorted(set(range(16)) - set(stem))
        zeroed.block.c1.weight[:, dropped] = 0
        zeroed.down.weight[:, dropped] = 0
        zeroed.block.c2.weight[:, sorted(set(range(16)) - set(inner))] = 0
    for batch in (1, 5, 16):
        x = torch.randn(batch, 1, 8, 8)
        (got,) = result.ir.run({"x": x})
        with torch.no_grad():
            (want,) = zeroed(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_vit_runs_at_every_batch_size_after_pruning():
    _, ir = vit_ir(layers=2)
    result, _ = prune(ir, ratio=0.5)
    assert result.metrics["pruned"] == {
        "heads": "2 groups: 4 -> 2",
        "ffn": "2 groups: 128 -> 64",
    }
    assert result.ir.meta.config["num_attention_heads"] == 2
    assert result.ir.meta.config["intermediate_size"] == 64
    for batch in (1, 5, 16):
        (out,) = result.ir.run({"x": torch.rand(batch, 3, 32, 32)})
        assert out.shape == (batch, 17, 64) and torch.isfinite(out).all()


def test_pruned_graph_exports_to_onnx_and_matches_in_onnx_runtime(tmp_path):
    import onnxruntime as ort

    _, ir = gpt2_ir(layers=2)
    result, _ = prune(ir, heads=0.25, ffn=0.3, round_to=8)
    export_onnx(result.ir, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, sequence in SIZES:
        feeds = inputs_for(result.ir, batch, sequence)
        (want,) = result.ir.run(feeds)
        (got,) = session.run(None, {"x": feeds["x"].numpy()})
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_global_scope_gives_per_layer_sizes_in_the_config():
    _, ir = bert_ir(layers=2)
    with torch.no_grad():  # make layer 1's FFN matter less, so global ranking prunes it more
        for name, p in ir.module.named_parameters():
            if "layer.1.output.dense.weight" in name:
                p.mul_(0.01)
    result, _ = prune(ir, ffn=0.5, scope="global")
    sizes = result.ir.meta.config["intermediate_size"]
    assert isinstance(sizes, list) and len(sizes) == 2
    assert sizes[0] > sizes[1] and sum(sizes) == 128


def test_reconstruction_refits_the_consumers_and_brings_outputs_closer():
    """Least-squares refit of the Linear layers reading pruned neurons and heads."""
    generator = torch.Generator().manual_seed(0)
    calibration = [{"x": torch.randint(0, 100, (8, 16), generator=generator)} for _ in range(8)]
    held_out = torch.randint(0, 100, (16, 16), generator=generator)
    errors = {}
    for refit in (False, True):
        eager, ir = bert_ir(layers=2)
        ctx = context(calibration=calibration)
        config = PruneConfig(heads=0.5, ffn=0.5, reconstruct=refit)
        result = StructuredPrune(config).run(ir, ctx)
        with torch.no_grad():
            (want,) = eager(held_out)
        (got,) = result.ir.run({"x": held_out})
        errors[refit] = float((got - want).norm() / want.norm())
        if refit:
            assert result.metrics["reconstructed"] == [
                f"m.encoder.layer.{i}.{name}"
                for i in (0, 1)
                for name in ("attention.output.dense", "output.dense")
            ]
    assert errors[True] < 0.8 * errors[False]
