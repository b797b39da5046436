"""``cast.fp16`` / ``cast.bf16`` on a BERT-style graph and a CNN: which ops stay float32, that
every border is an explicit cast, and that the outputs stay within half-precision tolerance."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.errors import BackendUnavailableError, PassError, RecipeError
from fxopt.engine.ir import ModelIR
from fxopt.engine.loading import LoadedModel, LoadOptions
from fxopt.engine.pass_base import PassContext
from fxopt.engine.specs import InputSpec
from fxopt.passes.cast import CastBF16, CastConfig, CastFP16
from fxopt.passes.cast.rewrite import CAST, PRECISION_KEY
from fxopt.passes.cast.support import check_dtype_supported
from fxopt.plugins.huggingface.loader import HuggingFaceLoader
from fxopt.run.bind import bind
from fxopt.run.capture import capture
from fxopt.run.recipe import parse_recipe

torch.set_num_threads(2)


# -- models -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_classifier_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT with a 3-class head, saved as a Hugging Face directory."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        architectures=["BertForSequenceClassification"],
    )
    path = tmp_path_factory.mktemp("bert-cls")
    BertForSequenceClassification(config).eval().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def bert_ir(bert_classifier_dir) -> ModelIR:
    loaded = HuggingFaceLoader().load(bert_classifier_dir, LoadOptions())
    loaded.dims = {"batch": DimRange(min=1, opt=4, max=8), "sequence": DimRange(min=2, max=32)}
    return capture(loaded, loaded.inputs, loaded.dims, source=str(bert_classifier_dir))


def bert_feeds(ir: ModelIR, batch: int = 4, sequence: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 200, (batch, sequence), generator=generator)
    mask = torch.ones(batch, sequence, dtype=torch.int64)
    mask[0, sequence // 2 :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {name: feeds[name] for name in ir.input_names}


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return (torch.log_softmax(self.fc(x), dim=-1),)


def capture_cnn() -> ModelIR:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    spec = InputSpec("pixel_values", "float32", ("batch", 3, 16, 16), -1.0, 1.0)
    dims = {"batch": DimRange(min=1, opt=4, max=8)}
    loaded = LoadedModel(model, "image-classification", [spec], dims, ["logits"], [])
    return capture(loaded, [spec], dims, source="cnn")


class Overflowing(nn.Module):
    """A projection whose outputs (~1e5) overflow fp16 (max 65504), then a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.big.weight.fill_(1.0e4)

    def forward(self, x):
        return (self.head(self.norm(self.big(x))),)


# -- helpers ----------------------------------------------------------------------------------


def context(tmp_path, batches=(), backend="torch", options=None) -> PassContext:
    recipe = parse_recipe({"target": {"backend": backend, "options": options or {}}})
    return PassContext(
        recipe=recipe,
        batches=lambda split: list(batches) if split == "calibration" else [],
        reference=lambda feeds: [],
        evaluate=lambda ir: {},
        cache_dir=tmp_path,
        output=Output(quiet=True),
    )


def run_cast(ir: ModelIR, tmp_path, pass_class=CastFP16, batches=(), **config):
    ir = copy.deepcopy(ir)
    result = pass_class(CastConfig(**config)).run(ir, context(tmp_path, batches))
    return result.ir, result.metrics


def precision_of(ir: ModelIR, op: str) -> list[str]:
    return [
        n.meta[PRECISION_KEY]
        for n in ir.graph.nodes
        if n.op == "call_function" and getattr(n.target, "_opname", None) == op
    ]


def float_input_dtypes(node) -> set[torch.dtype]:
    return {
        n.meta["val"].dtype
        for n in node.all_input_nodes
        if isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].is_floating_point()
    }


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(a.double().flatten(1), b.double().flatten(1))


# -- BERT-style graph -------------------------------------------------------------------------


def test_bert_keeps_layer_norm_and_logits_in_fp32(bert_ir, tmp_path):
    ir, metrics = run_cast(bert_ir, tmp_path)
    # 1 embedding LayerNorm + 2 per layer; the classifier (final logits) Linear
    assert metrics["fp32_ops"]["layer_norm"] == 5
    assert metrics["fp32_ops"]["linear"] == 1
    assert metrics["dtype"] == "float16"
    assert precision_of(ir, "layer_norm") == ["fp32"] * 5
    linears = precision_of(ir, "linear")
    assert linears.count("half") == len(linears) - 1 == 13  # 6 per layer + the pooler
    assert precision_of(ir, "scaled_dot_product_attention") == ["half", "half"]
    params = dict(ir.module.named_parameters())
    assert params["model.classifier.weight"].dtype == torch.float32
    assert params["model.bert.encoder.layer.0.attention.self.query.weight"].dtype == torch.float16
    assert params["model.bert.embeddings.LayerNorm.weight"].dtype == torch.float32


def test_every_dtype_border_is_an_explicit_cast(bert_ir, tmp_path):
    """Strong typing: each op's float inputs already have the dtype it computes in."""
    ir, metrics = run_cast(bert_ir, tmp_path)
    checked = 0
    for node in ir.graph.nodes:
        precision = node.meta.get(PRECISION_KEY)
        if precision is None:
            continue
        want = torch.float16 if precision == "half" else torch.float32
        assert float_input_dtypes(node) <= {want}, (node.name, float_input_dtypes(node))
        checked += 1
    casts = [n for n in ir.graph.nodes if n.target is CAST]
    assert checked == metrics["half_ops"] + sum(metrics["fp32_ops"].values()) > 30
    assert len(casts) == metrics["casts"] > 0
    output = next(n for n in ir.graph.nodes if n.op == "output")
    assert all(n.meta["val"].dtype == torch.float32 for n in output.all_input_nodes)


def test_bert_logits_within_fp16_tolerance(bert_ir, tmp_path):
    feeds = bert_feeds(bert_ir)
    (reference,) = bert_ir.run(feeds)
    ir, _ = run_cast(bert_ir, tmp_path)
    (got,) = ir.run(feeds)
    assert got.dtype == torch.float32
    assert (got - reference).abs().max().item() < 2e-2 * reference.abs().max().item()
    assert cosine(reference, got).min().item() > 0.9995


def test_keep_list_is_configurable(bert_ir, tmp_path):
    _, metrics = run_cast(
        bert_ir, tmp_path, add_keep_fp32=["aten.gelu"], remove_keep_fp32=["layer_norm"]
    )
    assert metrics["fp32_ops"]["gelu"] == 2
    assert "layer_norm" not in metrics["fp32_ops"]
    ir, metrics = run_cast(bert_ir, tmp_path, keep_fp32_nodes=["linear"], final_op_fp32=False)
    assert metrics["fp32_ops"]["linear"] == 1
    assert next(n for n in ir.graph.nodes if n.name == "linear").meta[PRECISION_KEY] == "fp32"


def test_half_outputs_when_asked(bert_ir, tmp_path):
    ir, _ = run_cast(bert_ir, tmp_path, final_op_fp32=False, outputs_fp32=False)
    (got,) = ir.run(bert_feeds(bert_ir))
    assert got.dtype == torch.float16


def test_bf16_on_cpu_within_tolerance(bert_ir, tmp_path):
    feeds = bert_feeds(bert_ir)
    (reference,) = bert_ir.run(feeds)
    ir, metrics = run_cast(bert_ir, tmp_path, pass_class=CastBF16)
    (got,) = ir.run(feeds)
    assert metrics["dtype"] == "bfloat16"
    assert dict(ir.module.named_parameters())[
        "model.bert.encoder.layer.1.output.dense.weight"
    ].dtype == (torch.bfloat16)
    assert cosine(reference, got).min().item() > 0.99


# -- CNN graph --------------------------------------------------------------------------------


def test_cnn_casts_input_at_entry_and_keeps_log_softmax(tmp_path):
    ir = capture_cnn()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    (reference,) = ir.run({"pixel_values": x})
    cast, metrics = run_cast(ir, tmp_path)
    assert metrics["fp32_ops"] == {"log_softmax": 1}
    assert precision_of(cast, "conv2d") == ["half", "half"]
    assert precision_of(cast, "batch_norm") == ["half", "half"]
    entry = [n for n in cast.graph.nodes if n.target is CAST and n.args[0].op == "placeholder"]
    assert len(entry) == 1 and entry[0].kwargs["dtype"] == torch.float16
    (got,) = cast.run({"pixel_values": x})
    assert got.dtype == torch.float32
    assert (got - reference).abs().max().item() < 1e-2


# -- overflow check ---------------------------------------------------------------------------


def test_overflow_check_moves_the_overflowing_op_to_fp32(tmp_path):
    from tests.graphs import capture_module

    torch.manual_seed(0)
    ir = capture_module(Overflowing(), features=16)
    x = torch.rand(8, 16)
    (reference,) = ir.run({"x": x})
    plain, _ = run_cast(ir, tmp_path)
    assert not torch.isfinite(plain.run({"x": x})[0]).all()

    fixed, metrics = run_cast(ir, tmp_path, batches=[{"x": x}], check_overflow=True)
    assert metrics["moved_to_fp32"] == ["linear"]
    assert metrics["fp32_ops"]["linear"] == 2  # the moved one and the final head
    (got,) = fixed.run({"x": x})
    assert torch.isfinite(got).all()
    assert cosine(reference, got).min().item() > 0.999


class TwiceOverflowing(nn.Module):
    """Two overflowing projections in a row: the second shows only once the first is fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = Overflowing(), Overflowing()

    def forward(self, x):
        return self.second(self.first(x)[0].repeat(1, 4))


def test_overflow_check_iterates_and_says_when_it_gives_up(tmp_path):
    from tests.graphs import capture_module

    torch.manual_seed(0)
    ir = capture_module(TwiceOverflowing(), features=16)
    x = torch.rand(8, 16)
    _, metrics = run_cast(ir, tmp_path, batches=[{"x": x}], check_overflow=True)
    assert metrics["moved_to_fp32"] == ["linear", "linear_2"]
    with pytest.raises(PassError, match="still has non-finite values after moving 1 ops"):
        run_cast(ir, tmp_path, batches=[{"x": x}], check_overflow=True, overflow_rounds=1)


# -- bad input --------------------------------------------------------------------------------


def test_unknown_op_name_is_a_recipe_error(host):
    recipe = parse_recipe(
        {"passes": [{"name": "cast.fp16", "config": {"add_keep_fp32": ["layernorm"]}}]}
    )
    with pytest.raises(RecipeError) as err:
        bind(recipe, host)
    assert "passes[0].config.add_keep_fp32" in str(err.value)
    assert "layernorm" in str(err.value)


def test_unknown_node_name_is_a_pass_error(bert_ir, tmp_path):
    with pytest.raises(PassError, match="not_a_node"):
        run_cast(bert_ir, tmp_path, keep_fp32_nodes=["not_a_node"])


def test_bf16_refused_where_onnxruntime_cpu_cannot_run_it(bert_ir, tmp_path):
    ctx = context(tmp_path, backend="onnxruntime")
    with pytest.raises(BackendUnavailableError, match="no bfloat16 kernels") as err:
        CastBF16().run(copy.deepcopy(bert_ir), ctx)
    assert err.value.exit_code == 4
    assert "cast.fp16" in err.value.render()


def test_bf16_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    torch_cuda = parse_recipe({"target": {"backend": "torch", "options": {"device": "cuda"}}})
    with pytest.raises(BackendUnavailableError, match="Tesla T4.*bfloat16"):
        check_dtype_supported(torch.bfloat16, torch_cuda, "cast.bf16")
    tensorrt = parse_recipe({"target": {"backend": "tensorrt"}})
    with pytest.raises(BackendUnavailableError, match="compute capability 8.0"):
        check_dtype_supported(torch.bfloat16, tensorrt, "cast.bf16")
    check_dtype_supported(torch.float16, tensorrt, "cast.fp16")  # fp16 is fine there


# -- the figure of the issue: MiniLM ----------------------------------------------------------


def test_minilm_fp16_keeps_pooled_cosine(minilm_dir, tmp_path):
    """Real MiniLM, real sentences: fp16 (computed in fp16 by torch on the CPU) vs fp32."""
    from fxopt.plugins.data.sources import stdlib_sentences

    loaded = HuggingFaceLoader().load(minilm_dir, LoadOptions(task="sentence-embedding"))
    loaded.dims = {"batch": DimRange(min=1, opt=8, max=64), "sequence": DimRange(min=2, max=512)}
    ir = capture(loaded, loaded.inputs, loaded.dims, source=str(minilm_dir))
    sentences = stdlib_sentences()[:32]
    batches = [loaded.tokenize(sentences[i : i + 16], 128) for i in range(0, 32, 16)]
    reference = torch.cat([ir.run(b)[0] for b in batches])
    cast = CastFP16().run(ir, context(tmp_path)).ir
    got = torch.cat([cast.run(b)[0] for b in batches])
    values = cosine(reference, got)
    print(f"MiniLM fp16 pooled cosine: mean {values.mean():.7f} min {values.min():.7f}")
    assert values.mean().item() >= 0.999
    assert values.min().item() >= 0.999
