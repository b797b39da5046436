"""The model families a new user tries first, on tiny random Hugging Face models.

GPT-2's linears are ``Conv1D`` modules (``addmm`` with a ``[in, out]`` weight): ``quantize.int8``
quantizes them as linears, and a run that would quantize nothing is an error, not an fp32
model that "passed". Llama and Qwen2 use grouped-query attention: its key/value heads and
query heads per group are pruned as two groups (whole key/value groups with their query
heads, or the same query heads from every group), whether the model repeats its key/value
heads or hands them to SDPA with ``enable_gqa``, and the config's head counts follow. A
pruned model's ``config.json`` always describes its weights (DistilBERT's own keys,
a classifier's pooler width left whole): rebuilt from that config,
``transformers`` loads the pruned weights and computes what the pruned graph computes.

DeBERTa-v2 fills masked attention scores with float32's lowest value, which fp16 cannot hold:
``cast.fp16`` computes that ``masked_fill`` in float32 (never an overflow error, never a NaN
downstream). It folds its heads into the batch axis for ``bmm``, so no attention op tags them:
the head split of its projections still makes their minor factor a ``head_dim`` group, kept
whole and listed, never an ``ffn`` group. A ResNet's conv channels are built from its
config's widths, which cannot record pruned ones: left whole with a config, pruned without
one (through its in-place residual adds). ``criterion = "taylor"`` scores a ConvNeXt whose
weights are constants of the graph (not parameters) through those constants, and falls back to
``l2`` with a warning where the outputs have no gradient at all.
"""

from __future__ import annotations

import collections
import json
import textwrap

import onnx
import pytest
import torch
from torch import nn

from fxopt.engine.errors import FxoptError
from fxopt.engine.pass_base import PassContext
from fxopt.engine.specs import InputSpec
from fxopt.passes.cast import CastConfig, CastFP16
from fxopt.passes.cast.rewrite import PRECISION_KEY
from fxopt.passes.prune.config import PruneConfig
from fxopt.passes.prune.graph import ChannelDependencies
from fxopt.passes.prune.structured import StructuredPrune
from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.plugins.onnxruntime.qdq import FUSED_MATMUL_OPS
from fxopt.run.recipe import Recipe
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import write_recipe
from tests.graphs import capture_model
from tests.passes import prune_models
from tests.passes.prune_models import (
    BATCH,
    SEQUENCE,
    bert_classifier_ir,
    bert_classifier_model,
    bert_ir,
    convnext_ir,
    deberta_ir,
    decoder_ir,
    distilbert_ir,
    distilbert_model,
    gpt2_ir,
    gpt2_lm_ir,
    resnet_ir,
)
from tests.passes.quantize_support import Collecting, batches, count_ops, make_ir

DQ_WEIGHT = "quantized_decomposed.dequantize_per_channel"
VOCAB = prune_models.FAMILY_VOCAB


def ids(batch: int = 4, sequence: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, sequence), generator=torch.Generator().manual_seed(seed))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-sample cosine of two batched outputs."""
    return float(nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean())


def int8_context(tmp_path, calibration: list[dict]) -> PassContext:
    return PassContext(
        recipe=Recipe(),
        batches=lambda split: calibration,
        reference=lambda feeds: [],
        evaluate=lambda ir: {},
        cache_dir=tmp_path,
        output=Collecting(),
    )


def prune(ir, calibration: list | None = None, **config):
    ctx = prune_models.context(calibration)
    return StructuredPrune(PruneConfig(**config)).run(ir, ctx), ctx.output.warnings


def rebuilt(model: nn.Module, config: dict, ir) -> nn.Module:
    """``model``'s class built from ``config`` (what the output's config.json says), with the
    pruned graph's weights loaded: every parameter must fit."""
    fresh = type(model)(type(model.config).from_dict(config)).eval()
    weights = {name[2:]: p for name, p in ir.module.named_parameters()}  # "m." of the wrapper
    missing, unexpected = fresh.load_state_dict(weights, strict=False)
    assert not unexpected
    assert not set(missing) & set(dict(fresh.named_parameters()))
    return fresh


def shapes(ir) -> dict[str, tuple[int, ...]]:
    params = ir.module.named_parameters(remove_duplicate=False)  # tied ones under every name
    return {name[2:]: tuple(p.shape) for name, p in params}


# -- GPT-2: Conv1D layers and quantize.int8 ---------------------------------------------------


def test_gpt2_conv1d_layers_are_quantized_as_int8_linears(tmp_path):
    eager, ir = gpt2_ir(layers=2)
    assert count_ops(ir, "aten.addmm") == 8 and count_ops(ir, "aten.linear") == 0
    ctx = int8_context(tmp_path, [{"x": ids(seed=i)} for i in range(4)])
    result = QuantizeInt8(Int8Config()).run(ir, ctx)
    metrics = result.metrics
    assert metrics["quantized"] == 8 and metrics["quantized_ops"] == {"linear": 8}
    assert count_ops(ir, DQ_WEIGHT) == 8 and count_ops(ir, "aten.addmm") == 0
    assert "warnings" not in metrics
    x = ids(seed=9)
    with torch.no_grad():
        (want,) = eager(x)
    (got,) = result.ir.run({"x": x})
    assert cosine(got, want) > 0.99


def test_gpt2_outlier_split_reaches_the_conv1d_layers(tmp_path):
    eager, ir = gpt2_ir(layers=1)
    ctx = int8_context(tmp_path, [{"x": ids(seed=i)} for i in range(4)])
    config = Int8Config(outlier_split=True, outlier_threshold=2.0, outlier_max_channels=2)
    result = QuantizeInt8(config).run(ir, ctx)
    split = result.metrics["outlier_channels"]
    assert split and all(name.startswith("m.h.0.") for name in split)
    assert result.metrics["quantized"] == 4
    x = ids(seed=9)
    with torch.no_grad():
        (want,) = eager(x)
    (got,) = result.ir.run({"x": x})
    assert cosine(got, want) > 0.99


class ConvOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return (self.conv(x.view(-1, 1, 4, 2).repeat(1, 1, 1, 2)),)


class ComputedWeightOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        return (nn.functional.linear(x, self.w * 2.0),)


@pytest.mark.parametrize(
    ("model", "holds", "fix"),
    [
        (ConvOnly, "aten.conv2d.default x 1", 'ops = ["conv2d"]'),
        (ComputedWeightOnly, "computed in the graph", "fold constants first"),
    ],
)
def test_int8_that_would_quantize_nothing_is_an_error(tmp_path, model, holds, fix):
    ir = make_ir(model())
    with pytest.raises(FxoptError) as info:
        calibration = [{"x": torch.randn(4, 8)} for _ in range(2)]
        QuantizeInt8(Int8Config()).run(ir, int8_context(tmp_path, calibration))
    error = info.value
    assert error.exit_code == 2 and error.field == "passes[0].config.ops"
    assert "nothing to quantize" in error.message and holds in error.message
    assert fix in error.fix


# -- Llama and Qwen2: grouped-query attention and prune.structured -----------------------------


#: ratios -> (query heads per key/value head, key/value heads) kept of (2, 2)
GQA_CASES = {
    "heads": ({"heads": 0.5}, (1, 2)),
    "kv_heads": ({"kv_heads": 0.5}, (2, 1)),
    "both_and_ffn": ({"heads": 0.5, "kv_heads": 0.5, "ffn": 0.25}, (1, 1)),
}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("case", list(GQA_CASES))
def test_gqa_prunes_whole_key_value_groups_or_query_heads_evenly_within_them(family, case):
    ratios, (per_group, kv) = GQA_CASES[case]
    eager, ir = decoder_ir(family)
    result, warnings = prune(ir, **ratios)
    assert not warnings and result.metrics["left_alone"] == []
    pruned = result.metrics["pruned"]
    assert pruned.get("kv_heads", "2 groups: 2 -> 2") == f"2 groups: 2 -> {kv}"
    assert pruned.get("heads", "2 groups: 2 -> 2") == f"2 groups: 2 -> {per_group}"
    after, ffn = shapes(ir), 96 if "ffn" in ratios else 128
    for i in (0, 1):
        attention = f"layers.{i}.self_attn"
        assert after[f"{attention}.q_proj.weight"] == (16 * kv * per_group, 64)
        assert after[f"{attention}.k_proj.weight"] == after[f"{attention}.v_proj.weight"]
        assert after[f"{attention}.k_proj.weight"] == (16 * kv, 64)
        assert after[f"{attention}.o_proj.weight"] == (64, 16 * kv * per_group)
        assert after[f"layers.{i}.mlp.down_proj.weight"] == (64, ffn)
    config = result.ir.meta.config
    assert config["num_attention_heads"] == kv * per_group
    assert (config["num_key_value_heads"], config["head_dim"]) == (kv, 16)
    assert config["intermediate_size"] == ffn
    x = ids()
    (got,) = result.ir.run({"x": x})
    with torch.no_grad():
        (want,) = eager(x)
        # transformers builds the model config.json describes, and it takes the weights
        again = rebuilt(eager.m, config, result.ir)(input_ids=x).last_hidden_state
    torch.testing.assert_close(again, got, atol=1e-5, rtol=1e-4)
    assert 0.5 < cosine(got, want) < 0.9999


def test_gqa_key_value_heads_ratio_is_never_implied_by_ratio():
    _, ir = decoder_ir("llama")
    result, _ = prune(ir, ratio=0.5)
    assert "kv_heads" not in result.metrics["pruned"]
    assert result.ir.meta.config["num_key_value_heads"] == 2


class GroupedQueryAttention(nn.Module):
    """Attention that hands grouped k/v heads to SDPA as they are (``enable_gqa``), the way
    transformers does where torch supports it, instead of repeating them."""

    def __init__(self, heads: int = 4, kv_heads: int = 2, dim: int = 8, width: int = 32) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.dim = heads, kv_heads, dim
        self.q = nn.Linear(width, heads * dim)
        self.k = nn.Linear(width, kv_heads * dim)
        self.v = nn.Linear(width, kv_heads * dim)
        self.o = nn.Linear(heads * dim, width)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv_heads, self.dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv_heads, self.dim).transpose(1, 2)
        y = nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return (self.o(y.transpose(1, 2).reshape(b, t, -1)),)


@pytest.mark.parametrize(
    ("ratios", "heads", "kv_heads"), [({"kv_heads": 0.5}, 2, 1), ({"heads": 0.5}, 2, 2)]
)
def test_sdpa_enable_gqa_is_pruned_as_groups(ratios, heads, kv_heads):
    torch.manual_seed(0)
    eager = GroupedQueryAttention().eval()
    spec = InputSpec("x", "float32", ("batch", "sequence", 32), -1.0, 1.0)
    ir = capture_model(eager, spec, {"batch": BATCH, "sequence": SEQUENCE})
    kinds = sorted(g.kind for g in ir.analysis(ChannelDependencies).prunable)
    assert kinds == ["heads", "kv_heads"]
    result, _ = prune(ir, **ratios)
    x = torch.randn(2, 5, 32)
    (got,) = result.ir.run({"x": x})
    # the same attention built at the pruned sizes, with the pruned weights, computes it
    smaller = GroupedQueryAttention(heads=heads, kv_heads=kv_heads).eval()
    smaller.load_state_dict(dict(result.ir.module.named_parameters()))
    with torch.no_grad():
        (want,) = smaller(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_multi_head_llama_prunes_heads_and_its_key_value_heads_in_the_config():
    eager, ir = decoder_ir("llama", kv_heads=4)
    result, _ = prune(ir, heads=0.5)
    assert result.metrics["pruned"] == {"heads": "2 groups: 4 -> 2"}
    config = result.ir.meta.config
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 2)
    assert config["head_dim"] == 16
    x = ids()
    (got,) = result.ir.run({"x": x})
    with torch.no_grad():
        again = rebuilt(eager.m, config, result.ir)(input_ids=x).last_hidden_state
    torch.testing.assert_close(again, got, atol=1e-5, rtol=1e-4)


def test_heads_transformers_would_refuse_in_config_json_fail_before_any_work():
    _, ir = decoder_ir("llama", kv_heads=4, layers=1)
    before = shapes(ir)
    with pytest.raises(FxoptError) as info:
        prune(ir, heads=0.25)
    error = info.value
    assert "transformers refuses config.json with the pruned sizes" in error.message
    assert "The hidden size (64) is not a multiple of the number of attention heads (3)" in (
        error.message
    )
    assert "heads = 0.5" in error.fix
    assert shapes(ir) == before


# -- config.json: always the pruned sizes, or the group is left whole --------------------------


def test_bert_classifier_pooler_is_left_whole_and_the_config_reloads():
    eager, ir = bert_classifier_ir()
    result, warnings = prune(ir, ffn=0.5)
    assert result.metrics["pruned"] == {"ffn": "2 groups: 64 -> 32"}
    [pooler] = [e for e in result.metrics["left_alone"] if "pooler" in e]
    assert pooler.startswith("m.bert.pooler.dense (ffn): config.json has no key for this width")
    assert warnings == []
    assert shapes(ir)["bert.pooler.dense.weight"] == (32, 32)
    config = result.ir.meta.config
    assert config["intermediate_size"] == 32
    x = ids()
    (got,) = result.ir.run({"x": x})
    with torch.no_grad():
        again = rebuilt(eager.m, config, result.ir)(input_ids=x).logits
    torch.testing.assert_close(again, got, atol=1e-5, rtol=1e-4)


def test_distilbert_config_keys_follow_the_pruned_sizes():
    eager, ir = distilbert_ir()
    result, warnings = prune(ir, ffn=0.25)
    assert warnings == []
    config = result.ir.meta.config
    assert config["hidden_dim"] == 48 and config["n_heads"] == 4
    x = ids()
    (got,) = result.ir.run({"x": x})
    with torch.no_grad():
        again = rebuilt(eager.m, config, result.ir)(input_ids=x).last_hidden_state
    torch.testing.assert_close(again, got, atol=1e-5, rtol=1e-4)

    _, ir = distilbert_ir()
    result, warnings = prune(ir, heads=0.25, ffn=0.5)
    assert warnings == []
    config = result.ir.meta.config
    assert (config["n_heads"], config["head_dim"], config["hidden_dim"]) == (3, 8, 32)
    after = shapes(ir)
    assert after["transformer.layer.0.attention.q_lin.weight"] == (3 * 8, 32)
    assert after["transformer.layer.1.ffn.lin1.weight"] == (32, 32)


def test_a_size_config_json_cannot_hold_is_left_whole_and_said():
    _, ir = bert_ir(layers=2)
    del ir.meta.config["intermediate_size"]
    result, warnings = prune(ir, heads=0.25, ffn=0.5)
    assert result.metrics["pruned"] == {"heads": "2 groups: 4 -> 3"}
    ffn = [e for e in result.metrics["left_alone"] if "(ffn)" in e]
    assert len(ffn) == 2 and all("config.json has no key for the ffn size" in e for e in ffn)
    assert any("ffn = 0.5 pruned nothing" in w for w in warnings)
    assert "intermediate_size" not in result.ir.meta.config


def test_a_width_config_json_has_no_key_for_fails_before_any_work():
    _, ir = gpt2_lm_ir()
    del ir.meta.config["n_embd"]
    before = shapes(ir)
    with pytest.raises(FxoptError) as info:
        prune(ir, hidden=0.25)
    error = info.value
    assert error.exit_code == 2 and error.field == "passes[0].config"
    assert error.message == (
        "config.json cannot describe the pruned model: config.json has no key for the hidden "
        "size; left as it was"
    )
    assert "n_head, n_inner" in error.fix
    assert all(before[name] == shape for name, shape in shapes(ir).items())  # nothing sliced


# -- DeBERTa-v2: masking constants in fp16, head_dim never an FFN group -----------------------


@pytest.mark.parametrize("check_overflow", [False, True])
def test_deberta_masking_constant_keeps_its_op_in_float32_under_fp16(check_overflow):
    eager, ir = deberta_ir()
    calibration = [{"x": ids(seed=i)} for i in range(2)]
    config = CastConfig(check_overflow=check_overflow)
    result = CastFP16(config).run(ir, prune_models.context(calibration))
    metrics = result.metrics
    fills = [n for n in result.ir.graph.nodes if n.target is torch.ops.aten.masked_fill.Scalar]
    assert len(fills) == 2  # one per layer, filling with torch.finfo(torch.float32).min
    assert metrics["fp32_out_of_range"] == [n.name for n in fills]
    assert all(n.meta[PRECISION_KEY] == "fp32" for n in fills)
    assert metrics["half_ops"] > 20  # the rest is fp16
    if check_overflow:
        assert metrics["moved_to_fp32"] == []
    x = ids(seed=9)
    (got,) = result.ir.run({"x": x})
    with torch.no_grad():
        (want,) = eager(x)
    assert torch.isfinite(got).all()
    assert cosine(got, want) > 0.999


def test_deberta_head_dim_is_never_an_ffn_group_and_is_listed_left_alone():
    eager, ir = deberta_ir()
    kinds = {g.name: g.kind for g in ir.analysis(ChannelDependencies).groups}
    attention = [f"m.encoder.layer.{i}.attention.self" for i in (0, 1)]
    for name in attention:
        # value's head_dim (value + output.dense), query's (query + key): 8 channels a head
        assert kinds[f"{name}.value_proj"] == kinds[f"{name}.query_proj"] == "head_dim"
        assert kinds[name] == "heads"
    before = shapes(ir)
    result, warnings = prune(ir, ffn=0.3, heads=0.25)
    metrics = result.metrics
    assert metrics["pruned"] == {"ffn": "2 groups: 64 -> 45"}
    left = metrics["left_alone"]
    head_dims = sorted(e.split(" ")[0] for e in left if "(head_dim)" in e)
    assert head_dims == [f"{n}.{p}" for n in attention for p in ("query_proj", "value_proj")]
    assert all(
        "head_dim of a projection split into heads: kept whole, heads are pruned as units" in e
        for e in left
        if "(head_dim)" in e
    )
    heads = [e for e in left if "(heads)" in e]
    assert len(heads) == 2 and all("no layer pruner for aten.repeat.default" in e for e in heads)
    assert any("heads = 0.25 pruned nothing" in w for w in warnings)
    after = shapes(ir)
    for i in (0, 1):
        layer = f"encoder.layer.{i}"
        for proj in ("query_proj", "key_proj", "value_proj"):
            assert after[f"{layer}.attention.self.{proj}.weight"] == (32, 32)
        assert after[f"{layer}.attention.output.dense.weight"] == (32, 32)
        assert after[f"{layer}.intermediate.dense.weight"] == (45, 32)
        assert after[f"{layer}.output.dense.weight"] == (32, 45)
        assert before[f"{layer}.intermediate.dense.weight"] == (64, 32)
    config = result.ir.meta.config
    assert (config["intermediate_size"], config["num_attention_heads"]) == (45, 4)
    x = ids()
    (got,) = result.ir.run({"x": x})
    with torch.no_grad():
        again = rebuilt(eager.m, config, result.ir)(input_ids=x).last_hidden_state
    torch.testing.assert_close(again, got, atol=1e-5, rtol=1e-4)


# -- ResNet: conv channels config.json cannot record --------------------------------------------


def test_resnet_conv_channels_stay_whole_for_config_json_and_prune_without_one():
    """transformers builds a ResNet's convolutions from config.json's widths (hidden_sizes,
    embedding_size), which no pruned size can be written to: with a config the conv groups
    are left whole and the pass refuses before any work; exported as a .pt2 (no config), its
    channels prune, through the residual adds it writes in place."""
    _, ir = resnet_ir()
    before = shapes(ir)
    with pytest.raises(FxoptError) as info:
        prune(ir, conv=0.5)
    error = info.value
    assert error.exit_code == 2 and error.field == "passes[0].config"
    assert "conv = 0.5 pruned nothing: conv groups left alone" in error.message
    assert "config.json has no key for conv channels" in error.message
    assert "torch.export (a .pt2 file" in error.fix
    assert shapes(ir) == before

    eager, ir = resnet_ir()
    ir.meta.config = {}
    result, warnings = prune(ir, conv=0.5)
    assert result.metrics["pruned"] == {"conv": "3 groups: 16..32 -> 8..16"}
    assert result.metrics["left_alone"] == [] and warnings == []
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    (got,) = result.ir.run({"x": x})
    with torch.no_grad():
        (want,) = eager(x)
    assert got.shape == want.shape == (2, 32, 4, 4) and torch.isfinite(got).all()


# -- ConvNeXt and criterion = "taylor": weights that are not parameters ------------------------


def as_constants(module: nn.Module) -> None:
    """Every parameter of ``module`` made a plain buffer: the weights are constants of the
    graph, as in a model exported with its weights frozen or folded."""
    for name, param in list(module.named_parameters()):
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        del owner._parameters[attr]
        owner.register_buffer(attr, param.detach().clone())


def test_convnext_taylor_scores_weights_held_as_constants_through_them():
    images = [
        {"x": torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i))}
        for i in range(2)
    ]
    pruned = {}
    for constants in (False, True):
        _, ir = convnext_ir()
        ir.meta.config = {}  # a .pt2: no config.json to keep in step
        if constants:
            as_constants(ir.module)
            assert not list(ir.module.parameters())
        result, warnings = prune(ir, images, ffn=0.5, criterion="taylor")
        assert result.metrics["pruned"] == {"ffn": "2 groups: 64..128 -> 32..64"}
        assert warnings == []
        pruned[constants] = dict(result.ir.module.state_dict())
    # the same Taylor scores, so the same channels kept, whether parameters or constants
    assert pruned[True].keys() == pruned[False].keys()
    for name, value in pruned[False].items():
        torch.testing.assert_close(pruned[True][name], value)


class ArgmaxHead(nn.Module):
    """Class indices out: nothing the loss could differentiate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return (self.fc2(torch.relu(self.fc1(x))).argmax(-1),)


def test_taylor_without_a_gradient_falls_back_to_l2_and_says_so():
    result, warnings = prune(make_ir(ArgmaxHead()), batches(), ffn=0.5, criterion="taylor")
    assert result.metrics["pruned"] == {"ffn": "1 groups: 16 -> 8"}
    [warning] = warnings
    assert warning == (
        "prune.structured: criterion 'taylor' found no gradient for fc1: the outputs do not "
        "depend on its weights through differentiable ops; scored by l2 magnitude instead"
    )
    assert result.metrics["warnings"] == warnings
    l2, _ = prune(make_ir(ArgmaxHead()), ffn=0.5, criterion="l2")
    for name, value in l2.ir.module.state_dict().items():
        torch.testing.assert_close(result.ir.module.state_dict()[name], value)


# -- from the command line ---------------------------------------------------------------------

RECIPE = """
schema_version = 1

[model]
task = "{task}"

[model.dims.batch]
min = 1
opt = 2
max = 4

[model.dims.sequence]
min = 2
opt = 16
max = 32

[data.calibration]
source = "synthetic"
samples = 8
batch_size = 4
sequence_length = 16

[data.verification]
source = "synthetic"
samples = 8
batch_size = 4
sequence_length = 16

[[passes]]
name = "{name}"
[passes.config]
{config}

[target]
backend = "onnxruntime"

[verify]
min_cosine = -1.0
latency = false
pass_samples = 0
"""


def cli_recipe(tmp_path, task: str, name: str, config: str):
    body = RECIPE.format(task=task, name=name, config=textwrap.dedent(config).strip())
    return write_recipe(tmp_path, body)


def saved(tmp_path, model: nn.Module, name: str):
    path = tmp_path / name
    model.eval().save_pretrained(path, safe_serialization=True)
    return path


def onnx_dims(out) -> set[int]:
    """Every size of every initializer in the artifact (weights, transposed or not)."""
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    return {int(d) for t in model.graph.initializer for d in t.dims}


def pass_metrics(report: dict, name: str) -> dict:
    return next(p for p in report["passes"] if p["name"] == name)["metrics"]


def test_cli_gpt2_int8_quantizes_every_conv1d(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = saved(tmp_path, GPT2LMHeadModel(config), "gpt2")
    recipe = cli_recipe(tmp_path, "causal-lm", "quantize.int8", "outlier_split = true")
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, model, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    metrics = pass_metrics(report, "quantize.int8")
    # 4 Conv1D per layer (c_attn, c_proj, c_fc, mlp.c_proj) and the LM head
    assert metrics["quantized"] == 9 and metrics["quantized_ops"] == {"linear": 9}
    optimized = onnx.load(str(out / "model.ort.onnx"), load_external_data=False)
    counts = collections.Counter(n.op_type for n in optimized.graph.node)
    assert sum(counts[op] for op in FUSED_MATMUL_OPS) == 9, counts
    assert report["verify"]["metrics"]["cosine_mean"] > 0.99

    # nothing of the asked kind: exit 2, what the graph holds, no output
    recipe = cli_recipe(tmp_path, "causal-lm", "quantize.int8", 'ops = ["conv2d"]')
    result = run_cli(capsys, recipe, model, "-o", tmp_path / "none")
    assert_clean_failure(
        result,
        2,
        "recipe.toml: passes[0].config.ops: pass 'quantize.int8' failed after []",
        "nothing to quantize: no conv2d op in the graph can take int8",
        "the graph holds aten.addmm.default x 8",  # GPT-2's Conv1D layers, as exported
        'fix: ops = ["linear"] quantizes those',
    )
    assert not (tmp_path / "none").exists()


def test_cli_bert_classifier_prunes_the_encoder_and_keeps_the_pooler(capsys, tmp_path):
    from transformers import AutoConfig

    model = saved(tmp_path, bert_classifier_model(), "bert")
    recipe = cli_recipe(tmp_path, "sequence-classification", "prune.structured", "ffn = 0.5")
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, model, "-o", out)
    assert result.code == 0, result.err
    assert "warning:" not in result.err  # the pass said nothing was off
    metrics = pass_metrics(json.loads((out / "report.json").read_text()), "prune.structured")
    assert metrics["pruned"] == {"ffn": "2 groups: 64 -> 32"}
    assert any(e.startswith("model.bert.pooler.dense (ffn)") for e in metrics["left_alone"])
    assert AutoConfig.from_pretrained(out).intermediate_size == 32
    assert 64 not in onnx_dims(out)


def test_cli_distilbert_config_reloads_with_the_pruned_sizes(capsys, tmp_path):
    from transformers import AutoConfig

    model = saved(tmp_path, distilbert_model(), "distilbert")
    recipe = cli_recipe(
        tmp_path, "feature-extraction", "prune.structured", "heads = 0.25\nffn = 0.25"
    )
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, model, "-o", out)
    assert result.code == 0, result.err
    assert "warning:" not in result.err  # the pass said nothing was off
    written = AutoConfig.from_pretrained(out)
    assert (written.n_heads, written.head_dim, written.hidden_dim) == (3, 8, 48)
    dims = onnx_dims(out)
    assert {48, 24} <= dims and 64 not in dims
