"""Small models for the ``prune.structured`` tests, built in code and captured like a run does.

Each ``*_ir()`` returns the eager module (for Torch-Pruning's oracle) and its ModelIR.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import PassContext
from fxopt.engine.specs import InputSpec
from fxopt.testing.models import ResidualBlock
from tests.graphs import capture_model

BATCH = DimRange(min=1, opt=4, max=16)
SEQUENCE = DimRange(min=2, opt=8, max=32)


class Hidden(nn.Module):
    """A Hugging Face model called with one named input, returning ``last_hidden_state``."""

    def __init__(self, model: nn.Module, input_name: str) -> None:
        super().__init__()
        self.m = model
        self.input_name = input_name

    def forward(self, x):
        return (self.m(**{self.input_name: x}).last_hidden_state,)


class ResNetish(nn.Module):
    """stem → residual block → strided conv → depthwise conv → pool → MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.block = ResidualBlock(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc1 = nn.Linear(32, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.stem(x))))
        x = torch.relu(self.dw(torch.relu(self.down(x))))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return (self.fc2(torch.relu(self.fc1(x))),)


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a wrong slice would change the numbers."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def cnn_ir() -> tuple[nn.Module, ModelIR]:
    torch.manual_seed(0)
    model = _randomize_norms(ResNetish()).eval()
    spec = InputSpec("x", "float32", ("batch", 1, 8, 8), -1.0, 1.0)
    return model, capture_model(model, spec, {"batch": BATCH})


def _text_ir(model: nn.Module, vocab: int, config: dict) -> tuple[nn.Module, ModelIR]:
    wrapped = Hidden(model.eval(), "input_ids").eval()
    spec = InputSpec("x", "int64", ("batch", "sequence"), 0, vocab)
    return wrapped, capture_model(wrapped, spec, {"batch": BATCH, "sequence": SEQUENCE}, config)


def tiny_bert(layers: int = 1) -> nn.Module:
    """A seeded random BERT: vocabulary 100, width 64, 4 heads, positions up to 32."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
    )
    return BertModel(config, add_pooling_layer=False)


def bert_ir(layers: int = 1) -> tuple[nn.Module, ModelIR]:
    model = tiny_bert(layers)
    return _text_ir(model, 100, model.config.to_dict())


def gpt2_ir(layers: int = 1) -> tuple[nn.Module, ModelIR]:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=layers,
        n_embd=64,
        n_head=4,
        vocab_size=100,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _text_ir(GPT2Model(config), 100, config.to_dict())


class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x):
        return (self.m(input_ids=x, use_cache=False).logits,)


def gpt2_lm_ir(layers: int = 2) -> tuple[nn.Module, ModelIR]:
    """GPT-2 with its language-model head, whose weight is tied to the token embedding."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=layers,
        n_embd=64,
        n_head=4,
        vocab_size=100,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    wrapped = Logits(GPT2LMHeadModel(config).eval()).eval()
    spec = InputSpec("x", "int64", ("batch", "sequence"), 0, 100)
    return wrapped, capture_model(
        wrapped, spec, {"batch": BATCH, "sequence": SEQUENCE}, config.to_dict()
    )


def vit_ir(layers: int = 1) -> tuple[nn.Module, ModelIR]:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        num_hidden_layers=layers,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    return _image_ir(ViTModel(config, add_pooling_layer=False), 32)


def _image_ir(model: nn.Module, size: int) -> tuple[nn.Module, ModelIR]:
    """``model`` called with ``pixel_values`` ``[batch, 3, size, size]``, captured."""
    wrapped = Hidden(model.eval(), "pixel_values").eval()
    spec = InputSpec("x", "float32", ("batch", 3, size, size), -1.0, 1.0)
    return wrapped, capture_model(wrapped, spec, {"batch": BATCH}, model.config.to_dict())


class Recorder(Output):
    """Console output that keeps the warnings, for tests to assert on."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def context(calibration: list | None = None, plugins=None) -> PassContext:
    """A PassContext for running the pass outside a recipe; ``ctx.output.warnings`` holds
    what it warned about."""

    class _Recipe:
        label = "recipe.toml"

    return PassContext(
        recipe=_Recipe(),  # type: ignore[arg-type]
        batches=lambda split: (calibration or []) if split == "calibration" else [],
        reference=lambda feeds: [],
        evaluate=lambda ir: {},
        cache_dir=Path("/nonexistent"),
        output=Recorder(),
        **({"plugins": plugins} if plugins is not None else {}),
    )


def inputs_for(ir: ModelIR, batch: int, sequence: int = 8) -> dict[str, torch.Tensor]:
    """Random inputs for ``ir`` at a batch (and sequence) size."""
    from fxopt.engine.synthetic import synthetic_inputs

    sizes = {"batch": batch, "sequence": sequence}
    return synthetic_inputs(ir.inputs, sizes, torch.Generator().manual_seed(batch * 100 + sequence))


# -- model families (tests/passes/test_model_families.py) -------------------------------------

FAMILY_VOCAB = 100


def decoder_model(family: str, layers: int = 2, kv_heads: int = 2) -> nn.Module:
    """A seeded random Llama or Qwen2 (width 64, 4 query heads of 16, ``kv_heads`` key/value
    heads: 2 is grouped-query attention, 4 plain multi-head), without its LM head."""
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    classes = {"llama": (LlamaConfig, LlamaModel), "qwen2": (Qwen2Config, Qwen2Model)}
    config_class, model_class = classes[family]
    torch.manual_seed(0)
    config = config_class(
        vocab_size=FAMILY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
    )
    return model_class(config)


def decoder_ir(family: str, layers: int = 2, kv_heads: int = 2) -> tuple[nn.Module, ModelIR]:
    model = decoder_model(family, layers, kv_heads)
    return _text_ir(model, FAMILY_VOCAB, model.config.to_dict())


def distilbert_model(layers: int = 2) -> nn.Module:
    """A seeded random DistilBERT: width 32 (``dim``), 4 heads (``n_heads``), FFN 64
    (``hidden_dim``)."""
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=FAMILY_VOCAB,
        dim=32,
        n_layers=layers,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=40,
    )
    return DistilBertModel(config)


def distilbert_ir(layers: int = 2) -> tuple[nn.Module, ModelIR]:
    model = distilbert_model(layers)
    return _text_ir(model, FAMILY_VOCAB, model.config.to_dict())


class ClassifierLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x):
        return (self.m(input_ids=x).logits,)


def bert_classifier_model(layers: int = 2) -> nn.Module:
    """A seeded random BERT for sequence classification (3 labels): width 32, 4 heads,
    FFN 64, with its pooler (a 32-wide Linear + tanh between the encoder and the classifier)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=FAMILY_VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def bert_classifier_ir(layers: int = 2) -> tuple[nn.Module, ModelIR]:
    model = bert_classifier_model(layers)
    wrapped = ClassifierLogits(model.eval()).eval()
    spec = InputSpec("x", "int64", ("batch", "sequence"), 0, FAMILY_VOCAB)
    dims = {"batch": BATCH, "sequence": SEQUENCE}
    return wrapped, capture_model(wrapped, spec, dims, model.config.to_dict())


def deberta_model(layers: int = 2) -> nn.Module:
    """A seeded random DeBERTa-v2 configured as the DeBERTa-v3 checkpoints are (relative
    attention with content-to-position and position-to-content terms, shared key
    projections, masked scores filled with float32's lowest value): width 32, 4 heads of 8,
    FFN 64."""
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    config = DebertaV2Config(
        vocab_size=FAMILY_VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=16,
        max_relative_positions=-1,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
    )
    return DebertaV2Model(config)


def deberta_ir(layers: int = 2) -> tuple[nn.Module, ModelIR]:
    model = deberta_model(layers)
    return _text_ir(model, FAMILY_VOCAB, model.config.to_dict())


def convnext_model() -> nn.Module:
    """A seeded random ConvNeXt on 32x32 images: two stages of one block (16 and 32 channels,
    each block's MLP 4x wider as two Linears)."""
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    config = ConvNextConfig(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=32, num_labels=3
    )
    return ConvNextModel(config)


def convnext_ir() -> tuple[nn.Module, ModelIR]:
    return _image_ir(convnext_model(), 32)


def resnet_model() -> nn.Module:
    """A seeded random ResNet (Hugging Face's): a 16-channel stem, two stages of one basic
    block (16 and 32 channels), the residual adds written in place (``+=``). Its config.json
    has no ``image_size``."""
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"
    )
    return ResNetModel(config)


def resnet_ir() -> tuple[nn.Module, ModelIR]:
    return _image_ir(resnet_model(), 32)
