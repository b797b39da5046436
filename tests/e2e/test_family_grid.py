"""The family grid: tiny random-weight models of 15 Hugging Face families through the command
line, with recipes derived from the shipped ones (``tests/families.py``).

Every run either passes or is refused before any work with a clear message (exit 2, the file,
the field and the fix, no traceback, no output directory); which one is asserted for every
family and recipe (``REFUSED``), and so are the warnings a run prints (``WARNED``: none where
none is listed). The fast tests run each family through one pass, chosen so that the four
kinds (fp32 cleanup, int8, fp16, prune) are all covered; the slow ones run all four recipes
of every family on ONNX Runtime, and check that an fp16 artifact is no larger than the fp32
one.

The Hugging Face loader reads a model's inputs from its ``forward``: a T5 encoder checkpoint
is built as ``T5EncoderModel`` and called with ``input_ids`` and ``attention_mask`` by name;
a conv net whose config.json gives no ``image_size`` gets ``pixel_values`` at 224x224.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fxopt.engine.errors import ModelError
from fxopt.engine.loading import LoadOptions
from fxopt.engine.synthetic import synthetic_inputs
from fxopt.plugins.huggingface.loader import HuggingFaceLoader
from tests.cli import assert_clean_failure, run_cli
from tests.families import FAMILIES, KINDS, family_recipe, save_family

torch.set_num_threads(2)

#: the one pass each family's fast test runs (all four kinds covered), and the target: ONNX
#: Runtime for the conv nets' int8 (its fusions are what the warnings are about) and one fp16
#: graph, else the torch backend, which spares the seconds of an ONNX export (the slow tests
#: lower every recipe to ONNX Runtime, as the shipped recipes do)
FAST = {
    "bert": ("prune", "torch"),
    "distilbert": ("int8", "torch"),
    "roberta": ("fp16", "torch"),
    "albert": ("prune", "torch"),
    "electra": ("int8", "torch"),
    "vit": ("fp16", "onnxruntime"),
    "llama": ("prune", "torch"),
    "qwen2": ("fp32", "torch"),
    "gpt2": ("fp32", "torch"),
    "t5-encoder": ("fp32", "torch"),
    "resnet": ("int8", "onnxruntime"),
    "convnext": ("int8", "onnxruntime"),
    "deberta-v2": ("fp16", "torch"),
    "mobilebert": ("fp32", "torch"),
    "swin": ("fp32", "torch"),
}

#: the runs refused before any work: (family, recipe) -> what the error says. Every other
#: run passes.
REFUSED = {
    # transformers builds a ResNet's convolutions from config.json's widths, which cannot
    # record pruned channels: left whole, so nothing is left to prune
    ("resnet", "prune"): (
        "resnet-prune.toml: passes[1].config",
        "nothing to prune: conv = 0.5 pruned nothing: conv groups left alone",
        "config.json has no key for conv channels",
        "fix: a Hugging Face model's conv channels cannot be recorded in its config.json",
    ),
    # its channels are all LayerNorm-spanned (hidden) widths, its MLP Linears (ffn)
    ("convnext", "prune"): (
        "convnext-prune.toml: passes[1].config",
        "nothing to prune: conv = 0.5 pruned nothing: the model has no conv group",
        "fix: set a larger ratio, or a kind the model has",
    ),
    # mlp_ratio, not an FFN size; the heads differ per stage and a stage holds two blocks
    ("swin", "prune"): (
        "swin-prune.toml: passes[1].config",
        "ffn = 0.3 pruned nothing: ffn groups left alone",
        "config.json has no key for the ffn size",
        "heads = 0.25 pruned nothing",
    ),
}

#: what the runs that pass warn about; any other run prints no warning
IN_FLOAT = "quantized ops left in float by ONNX Runtime's fusions"
WARNED = {
    ("gpt2", "prune"): ("heads = 0.25 pruned nothing: the model has no heads group",),
    ("deberta-v2", "prune"): (
        "heads = 0.25 pruned nothing: heads groups left alone",
        "no layer pruner for aten.repeat.default",
    ),
    ("mobilebert", "prune"): ("ffn = 0.3 pruned nothing: ffn groups left alone",),
    ("resnet", "int8"): (
        "quantize.int8: the graph has no linear op to quantize",
        IN_FLOAT,
        "the activations are uint8 already",
    ),
    ("convnext", "int8"): (IN_FLOAT, "the activations are uint8 already"),
}


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """``family_dir(name)``: the family's model, saved once per session."""
    saved = {}

    def get(name: str):
        if name not in saved:
            saved[name] = save_family(tmp_path_factory.mktemp(name), FAMILIES[name])
        return saved[name]

    return get


def deployed_bytes(out, report: dict) -> int:
    """What a deployment copies: the artifact and the files it references."""
    artifacts = report["artifacts"]
    return sum((out / name).stat().st_size for name in artifacts["deploy"])


def run_recipe(
    capsys, tmp_path, family_dir, name: str, kind: str, target: str = "onnxruntime"
) -> dict | None:
    """Run ``kind``'s recipe on ``name``'s model and assert the outcome the tables give:
    the report of a run that passed, ``None`` for one refused."""
    family = FAMILIES[name]
    recipe = family_recipe(tmp_path, family, kind, target=target)
    out = tmp_path / f"{name}-{kind}"
    result = run_cli(capsys, recipe, family_dir(name), "-o", out)
    if (name, kind) in REFUSED:
        assert_clean_failure(result, 2, *REFUSED[name, kind])
        assert not out.exists()
        return None
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    err = " ".join(result.err.split())
    warned = WARNED.get((name, kind))
    if warned is None:
        assert "warning:" not in err, err
    for needle in warned or ():
        assert needle in err, f"{needle!r} not in {err!r}"
    assert 'set activations = "uint8"' not in err  # every int8 recipe here sets it
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["task"] == family.task
    metrics = {p["name"]: p["metrics"] for p in report["passes"]}
    if kind == "int8":
        assert metrics["quantize.int8"]["quantized"] > 0
    elif kind == "fp16":
        assert metrics["cast.fp16"]["dtype"] == "float16"
        assert metrics["cast.fp16"]["half_ops"] > 0
    elif kind == "prune":
        pruned = metrics["prune.structured"]
        assert pruned["params_after"] < pruned["params_before"]
    return report


@pytest.mark.parametrize("name", list(FAST))
def test_family_runs_its_fast_pass_through_the_cli(capsys, tmp_path, family_dir, name):
    kind, target = FAST[name]
    report = run_recipe(capsys, tmp_path, family_dir, name, kind, target)
    assert report is not None  # every fast pass is one that runs end to end
    inputs = {entry["name"]: entry["shape"] for entry in report["inputs"]}
    if FAMILIES[name].image:
        size = 224 if name == "resnet" else 32  # ResNet's config.json gives no image_size
        assert inputs == {"pixel_values": ["batch", 3, size, size]}
    else:
        assert "input_ids" in inputs and "pixel_values" not in inputs


def test_fast_passes_cover_every_kind_and_family():
    assert set(FAST) == set(FAMILIES) and len(FAMILIES) == 15
    assert {kind for kind, _ in FAST.values()} == set(KINDS)
    assert all((name, kind) not in REFUSED for name, (kind, _) in FAST.items())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_recipe_passes_or_is_refused_before_any_work(capsys, tmp_path, family_dir, name):
    reports = {kind: run_recipe(capsys, tmp_path, family_dir, name, kind) for kind in KINDS}
    assert reports["fp32"] is not None and reports["fp16"] is not None
    fp32 = deployed_bytes(tmp_path / f"{name}-fp32", reports["fp32"])
    fp16 = deployed_bytes(tmp_path / f"{name}-fp16", reports["fp16"])
    assert fp16 <= fp32, (fp16, fp32)


@pytest.mark.slow
def test_mobilebert_sequence_of_two_is_refused_at_capture(capsys, tmp_path, family_dir):
    recipe = family_recipe(tmp_path, FAMILIES["mobilebert"], "fp32", sequence_min=2)
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, family_dir("mobilebert"), "-o", out)
    assert_clean_failure(
        result,
        2,
        "torch.export could not capture the model",
        "Constraints violated (sequence)",
        "model.dims.sequence",
        "fix: narrow [model.dims.sequence] (now min = 2, max = 32)",
    )
    assert not out.exists()


# -- the loader: inputs by name, from the model's forward ---------------------------------------


def loaded_and_run(path):
    """The Hugging Face loader's model for ``path``, and its output on synthetic inputs."""
    loaded = HuggingFaceLoader().load(path, LoadOptions())
    sizes = {"batch": 2, "sequence": 8}
    feeds = synthetic_inputs(loaded.inputs, sizes, torch.Generator().manual_seed(0))
    with torch.no_grad():
        (out,) = loaded.module(*(feeds[spec.name] for spec in loaded.inputs))
    return loaded, out


def test_t5_encoder_is_built_as_its_encoder_and_called_by_keyword(family_dir):
    loaded, out = loaded_and_run(family_dir("t5-encoder"))
    assert type(loaded.module.model).__name__ == "T5EncoderModel"
    assert [spec.name for spec in loaded.inputs] == ["input_ids", "attention_mask"]
    assert out.shape == (2, 8, 32)


def test_an_encoder_decoder_t5_checkpoint_gives_its_encoders_features(tmp_path):
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    config = T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    T5Model(config).eval().save_pretrained(tmp_path, safe_serialization=True)
    loaded, out = loaded_and_run(tmp_path)
    assert type(loaded.module.model).__name__ == "T5EncoderModel"
    assert out.shape == (2, 8, 16)


def test_a_conv_net_without_image_size_gets_224_pixel_images(family_dir):
    path = family_dir("resnet")
    assert "image_size" not in json.loads((path / "config.json").read_text())
    loaded, out = loaded_and_run(path)
    [spec] = loaded.inputs
    assert (spec.name, spec.dtype, spec.shape) == (
        "pixel_values",
        "float32",
        ("batch", 3, 224, 224),
    )
    assert set(loaded.dims) == {"batch"} and loaded.tokenize is None
    assert out.shape == (2, 32, 28, 28)  # the stem's stride and pooling /4, stage 2's /2


@pytest.mark.parametrize(
    ("image_size", "shape"), [(48, ("batch", 3, 48, 48)), ([24, 40], ("batch", 3, 24, 40))]
)
def test_image_size_comes_from_config_json(tmp_path, family_dir, image_size, shape):
    path = tmp_path / "convnext"
    shutil.copytree(family_dir("convnext"), path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "image_size": image_size}))
    loaded, out = loaded_and_run(path)
    assert loaded.inputs[0].shape == shape
    assert out.shape[:2] == (2, 32)


def test_an_image_size_that_is_no_size_names_the_field_and_the_recipe_fix(tmp_path, family_dir):
    path = tmp_path / "convnext"
    shutil.copytree(family_dir("convnext"), path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "image_size": [24, 40, 3]}))
    with pytest.raises(ModelError) as info:
        HuggingFaceLoader().load(path, LoadOptions())
    error = info.value
    assert error.field == "image_size" and error.exit_code == 2
    assert error.file == str(path / "config.json")
    assert "image_size must be a positive int or [height, width], not [24, 40, 3]" in (
        error.message
    )
    assert "[model.inputs.pixel_values] shape" in error.fix
