"""The model families a new user tries first, as tiny random-weight Hugging Face models, and the
four kinds of recipe derived from the shipped ones (``fp32``, ``int8``, ``fp16``, ``prune``)
that run them through the command line.

Every model is built from its transformers config in code (no model hub): width 32 or less,
two layers, sequences up to 32 tokens, 32x32 images (ResNet: the 224x224 the loader proposes
for a conv net whose config.json gives no ``image_size``), and saved with
``save_pretrained(safe_serialization=True)``. The data is the synthetic source, so no
tokenizer is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fxopt.testing import recipe_toml
from tests.conftest import write_recipe
from tests.passes.prune_models import (
    FAMILY_VOCAB,
    convnext_model,
    deberta_model,
    decoder_model,
    distilbert_model,
    resnet_model,
)

#: what every BERT-like text family shares: 2 layers of width 32, 4 heads, FFN 64
TEXT = dict(
    vocab_size=FAMILY_VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
#: the recipes a family runs, after the shipped ones they are derived from
KINDS = ("fp32", "int8", "fp16", "prune")


def _transformers(config_name: str, model_name: str, **sizes) -> nn.Module:
    """``model_name(config_name(**sizes))`` from transformers, seeded."""
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, model_name)(getattr(transformers, config_name)(**sizes))


def _causal(base: nn.Module) -> nn.Module:
    """The causal language model (with its LM head) of a decoder's config."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(base.config)


def _text(config_name: str, model_name: str, **extra) -> Callable[[], nn.Module]:
    return lambda: _transformers(config_name, model_name, **{**TEXT, **extra})


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], nn.Module]
    task: str = "feature-extraction"
    #: takes ``pixel_values`` (no sequence axis)
    image: bool = False
    #: a conv net: int8 quantizes its convolutions, prune removes conv channels
    conv: bool = False
    #: the shortest sequence the recipes declare
    sequence_min: int = 2
    #: grouped-query attention (fewer key/value heads than query heads)
    grouped_query: bool = False


FAMILIES = {
    family.name: family
    for family in (
        Family("bert", _text("BertConfig", "BertModel")),
        Family("distilbert", distilbert_model),
        Family("roberta", _text("RobertaConfig", "RobertaModel", pad_token_id=1)),
        Family("albert", _text("AlbertConfig", "AlbertModel", embedding_size=16)),
        Family("electra", _text("ElectraConfig", "ElectraModel", embedding_size=16)),
        Family(
            "vit",
            lambda: _transformers(
                "ViTConfig",
                "ViTModel",
                **{**TEXT, "image_size": 32, "patch_size": 8},
            ),
            image=True,
        ),
        Family(
            "llama",
            lambda: _causal(decoder_model("llama")),
            task="causal-lm",
            grouped_query=True,
        ),
        Family("qwen2", lambda: decoder_model("qwen2"), grouped_query=True),
        Family(
            "gpt2",
            lambda: _transformers(
                "GPT2Config",
                "GPT2LMHeadModel",
                vocab_size=FAMILY_VOCAB,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=64,
            ),
            task="causal-lm",
        ),
        Family(
            "t5-encoder",
            lambda: _transformers(
                "T5Config",
                "T5EncoderModel",
                vocab_size=FAMILY_VOCAB,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
            ),
        ),
        Family("resnet", resnet_model, image=True, conv=True),
        Family("convnext", convnext_model, image=True, conv=True),
        Family("deberta-v2", deberta_model),
        # its trigram embedding pads a shifted copy of the tokens: torch.export proves the
        # graph for 3 tokens and more (a recipe declaring 2 fails at capture, exit 2)
        Family(
            "mobilebert",
            _text(
                "MobileBertConfig",
                "MobileBertModel",
                embedding_size=16,
                true_hidden_size=16,
                intra_bottleneck_size=16,
                intermediate_size=32,
                num_feedforward_networks=2,
            ),
            sequence_min=3,
        ),
        Family(
            "swin",
            lambda: _transformers(
                "SwinConfig",
                "SwinModel",
                image_size=32,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1],
                num_heads=[2, 4],
                window_size=4,
            ),
            image=True,
        ),
    )
}


def save_family(directory: Path, family: Family) -> Path:
    """``family``'s model, saved as a Hugging Face directory in ``directory``."""
    family.build().eval().save_pretrained(directory, safe_serialization=True)
    return directory


def _passes(family: Family, kind: str) -> list[dict]:
    """The passes of ``kind``'s recipe: recipes/quickstart.toml (fp32), minilm-int8-cpu and
    digits-cnn-int8 (int8), minilm-fp16 (fp16), minilm-prune and digits-cnn-prune without
    their recovery fine-tune (prune)."""
    cleanup = [{"name": "cleanup.dropout"}, {"name": "cleanup.dce"}]
    if kind == "fp32":
        return [cleanup[0], {"name": "cleanup.constant_fold"}, cleanup[1]]
    if kind == "int8":
        config = {"activations": "uint8", "observer": "mse"}
        config |= {"ops": ["linear", "conv2d"]} if family.conv else {"outlier_split": True}
        return [*cleanup, {"name": "quantize.int8", "config": config}]
    if kind == "fp16":
        config = {"check_overflow": True, "overflow_batches": 2}
        return [cleanup[0], {"name": "cast.fp16", "config": config}, cleanup[1]]
    ratios = {"conv": 0.5} if family.conv else {"ffn": 0.3, "heads": 0.25}
    if family.grouped_query:  # half the key/value groups, with their query heads
        ratios = {"ffn": 0.3, "kv_heads": 0.5}
    prune = {"name": "prune.structured", "config": {**ratios, "criterion": "taylor"}}
    return [cleanup[0], prune, cleanup[1]]


#: the fidelity budget of each kind: the shipped recipes' (int8 and fp16 a little wider for
#: random weights); a pruned model is not fine-tuned back here, so its budget is the plumbing
BUDGETS = {"fp32": 0.9999, "int8": 0.99, "fp16": 0.999, "prune": -1.0}


#: the targets a recipe may lower to: the shipped recipes' ONNX Runtime, and the torch
#: backend's torch.export archive (no ONNX export: seconds faster on a tiny model)
TARGETS = {
    "onnxruntime": {"backend": "onnxruntime", "options": {"graph_optimization_level": "all"}},
    "torch": {"backend": "torch", "options": {"onnx": False}},
}


def family_recipe(
    directory: Path,
    family: Family,
    kind: str,
    *,
    target: str = "onnxruntime",
    sequence_min: int | None = None,
) -> Path:
    """Write ``kind``'s recipe for ``family`` in ``directory``, lowered to ``target``; returns
    its path. ``sequence_min``: the shortest sequence it declares, when not the family's."""
    split = {"source": "synthetic", "samples": 8, "batch_size": 4}
    dims = {"batch": {"min": 1, "opt": 2, "max": 4}}
    if not family.image:
        split["sequence_length"] = 16
        shortest = sequence_min or family.sequence_min
        dims["sequence"] = {"min": shortest, "opt": 16, "max": 32}
    recipe = {
        "schema_version": 1,
        "model": {"task": family.task, "dims": dims},
        "data": {"calibration": split, "verification": split},
        "passes": _passes(family, kind),
        "target": TARGETS[target],
        "verify": {"min_cosine": BUDGETS[kind], "latency": False, "pass_samples": 0},
    }
    return write_recipe(directory, recipe_toml(recipe), f"{family.name}-{kind}.toml")
