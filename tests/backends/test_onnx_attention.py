"""Attention lowered to ONNX as matmul + one shared additive mask + softmax + matmul."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import torch

from fxopt.engine.config import DimRange
from fxopt.engine.loading import LoadedModel
from fxopt.engine.specs import InputSpec
from fxopt.plugins.onnx.attention import attention, mask_bias, rewrite_attention
from fxopt.plugins.onnx.export import export_onnx
from fxopt.run.capture import capture
from tests.passes.prune_models import tiny_bert

LAYERS = 3


class Encoder(torch.nn.Module):
    """A random BERT called with ids and a padding mask, returning its token states."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = tiny_bert(LAYERS).eval()

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def encoder_ir():
    model = Encoder().eval()
    specs = [
        InputSpec("input_ids", "int64", ("batch", "sequence"), 0, 100),
        InputSpec("attention_mask", "int64", ("batch", "sequence"), 1, 2),
    ]
    dims = {"batch": DimRange(min=1, opt=2, max=8), "sequence": DimRange(min=2, opt=8, max=32)}
    loaded = LoadedModel(
        module=model, task="generic", inputs=specs, dims=dims, output_names=["y"], files=[]
    )
    return model, capture(loaded, specs, dims, source="test")


def padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_attention_is_plain_math_with_one_mask_and_the_outputs_do_not_change(tmp_path):
    model, ir = encoder_ir()
    code = ir.module.code
    export_onnx(ir, tmp_path / "model.onnx")
    assert ir.module.code == code  # the IR itself is left as it was
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert ops.count("Softmax") == LAYERS
    assert "IsNaN" not in ops
    assert ops.count("Where") <= 1  # the padding mask becomes a bias once, for every layer
    feeds = padded_batch()
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (got,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        want = model(**feeds).numpy()
    real = feeds["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-5)


def test_the_rewrite_computes_what_scaled_dot_product_attention_does():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=generator) for _ in range(3))
    keep = torch.rand(2, 1, 6, 6, generator=generator) > 0.3
    keep[..., 0] = True  # every row keeps a key
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    got = attention(q, k, v, mask_bias(keep, torch.float32), None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    additive = torch.randn(2, 1, 6, 6, generator=generator)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=0.3)
    torch.testing.assert_close(attention(q, k, v, additive, 0.3), want, rtol=1e-5, atol=1e-6)


def test_causal_and_dropout_calls_keep_the_exporters_translation():
    class Causal(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    args = tuple(torch.randn(1, 2, 4, 8) for _ in range(3))
    module = torch.export.export(Causal(), args).module()
    assert rewrite_attention(module) == 0
