"""Quantization-aware training: a pt2e-quantized graph trains through fake-quant and leaves
the pass with the same explicit Q/DQ form, its int8 weights re-quantized."""

from __future__ import annotations

import pytest
import torch

from fxopt.engine.console import Output
from fxopt.engine.pass_base import PassContext
from fxopt.passes.finetune import Finetune, FinetuneConfig
from fxopt.run.recipe import parse_recipe
from tests.graphs import capture_module
from tests.passes.finetune_support import one_thread  # noqa: F401  (fixture)

pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
x86 = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")


def quantized_ir(teacher: torch.nn.Module, data: torch.Tensor):
    ir = capture_module(teacher)
    quantizer = x86.X86InductorQuantizer().set_global(
        x86.get_default_x86_inductor_quantization_config()
    )
    prepared = pt2e.prepare_pt2e(ir.module, quantizer)
    prepared(data[:32])  # the capture's batch range is 1..32
    ir.module = pt2e.convert_pt2e(prepared, fold_quantize=True)
    return ir


def test_quantized_graph_trains_on_its_int8_grid_and_keeps_its_qdq_form(tmp_path):
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    data = torch.randn(128, 8)
    ir = quantized_ir(teacher, data)
    # a damaged quantized model: its first int8 weight rows knocked to zero
    frozen = [n for n, b in ir.module.named_buffers() if b.dtype == torch.int8]
    getattr(ir.module, frozen[0])[:8] = 0
    code = ir.module.code
    train = [{"x": data[i : i + 16]} for i in range(0, 96, 16)]
    verification = [{"x": data[96:]}]  # 32 samples

    def reference(feeds):
        with torch.no_grad():
            return [teacher(feeds["x"])]

    ctx = PassContext(
        recipe=parse_recipe({}),
        batches=lambda split: {"finetune": train, "verification": verification}.get(split, []),
        reference=reference,
        evaluate=lambda ir: {},
        cache_dir=tmp_path,
        output=Output(quiet=True),
    )
    config = FinetuneConfig(objective="distill", epochs=30, lr=1e-2, weight_decay=0.0)
    metrics = Finetune(config).run(ir, ctx).metrics
    assert metrics["qat_fake_quant_nodes"] == 4  # 2 activations, 2 weights
    assert metrics["eval_loss_after"] < 0.5 * metrics["eval_loss_before"], metrics
    assert ir.module.code == code  # the same Q/DQ graph came back
    assert all(getattr(ir.module, n).dtype == torch.int8 for n in frozen)
    assert int((getattr(ir.module, frozen[0])[:8] != 0).sum()) > 0  # re-quantized, trained
    assert not any("fxopt_qat" in n for n, _ in ir.module.named_parameters())
