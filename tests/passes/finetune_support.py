"""Helpers of the ``finetune`` tests: the digits CNN, recipes, and a pass context.

The digits model and data come from ``examples/digits/digits_model.py`` (the script the
shipped recipe documents), loaded by path so tests and users build the very same model.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from fxopt.engine.console import Output
from fxopt.engine.plugin_host import load_plugins
from fxopt.plugins.data.sources import stdlib_sentences
from fxopt.run import capture, load, passes, reference
from fxopt.run.bind import bind
from fxopt.run.options import RunOptions
from fxopt.run.recipe import load_recipe
from fxopt.run.state import RunState
from tests.conftest import load_script, merged, write_recipe

ROOT = Path(__file__).resolve().parents[2]
DIGITS_SCRIPT = ROOT / "examples" / "digits" / "digits_model.py"


@cache
def digits_module():
    return load_script(DIGITS_SCRIPT, "fxopt_digits_example")


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every fine-tune test runs on one thread (see tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """``digits.npz`` + ``model.pt2``: a small CNN trained (plainly) on 512 images."""
    torch.set_num_threads(1)
    return digits_module().build(tmp_path_factory.mktemp("digits"), train=512, epochs=8, width=8)


#: fine-tuning the digits CNN, for a folder holding ``digits.npz`` (``digits_recipe`` points
#: it at the files, ``config`` is the pass's)
DIGITS_RECIPE = {
    "schema_version": 1,
    "model": {
        "task": "image-classification",
        "inputs": {"x": {"dtype": "float32", "shape": ["batch", 1, 8, 8], "low": 0.0, "high": 1.0}},
        "dims": {"batch": {"min": 1, "opt": 32, "max": 512}},
    },
    "data": {
        "finetune": {"source": "npz", "path": "digits.npz", "samples": 512, "batch_size": 64},
        "verification": {"source": "npz", "path": "digits.npz", "samples": 256, "batch_size": 128},
    },
    "passes": [{"name": "finetune", "config": {}}],
    "target": {"backend": "torch", "options": {"onnx": False}},
    "verify": {"min_cosine": -1.0, "latency": False, "pass_samples": 0},
}


def digits_recipe(
    directory: Path,
    digits: Path,
    config: dict,
    *,
    samples: int = 512,
    batch_size: int = 64,
    verify: int = 256,
    name: str = "recipe.toml",
    **changes: object,
) -> Path:
    """A recipe fine-tuning the digits CNN in ``digits`` with ``config`` as the pass's config
    (its sub-tables as dicts: ``{"adversarial": {"method": "fgsm"}}``) on ``samples`` images in
    batches of ``batch_size``, verified on ``verify``; ``changes`` are laid over the rest
    (``data={"finetune": None}`` removes the training set)."""
    data = str(digits / "digits.npz")
    recipe = merged(
        DIGITS_RECIPE,
        {
            "model": {"path": str(digits / "model.pt2")},
            "data": {
                "finetune": {"path": data, "samples": samples, "batch_size": batch_size},
                "verification": {"path": data, "samples": verify},
            },
            "passes": [{"name": "finetune", "config": config}],
        },
    )
    return write_recipe(directory, merged(recipe, changes), name)


def prepare(recipe_path: Path, host=None, *, resume: str | None = None, cache_dir=None):
    """Load, capture and build the data with the run's own stages; returns (ir, ctx, pass)."""
    host = host or load_plugins()
    recipe = load_recipe(recipe_path)
    run = RunState(
        recipe,
        bind(recipe, host),
        host,
        recipe.resolve_path(recipe.model.path),
        RunOptions(resume=resume),
        Output(quiet=True),
        cache_dir=cache_dir or recipe_path.parent / "cache",
    )
    for stage in (load.stage, reference.stage, capture.stage):
        stage(run)
    return run.ir, passes.context(run), run.plan.passes[0]


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


#: distilling a BERT (``bert_recipe`` names the model and the text)
BERT_FINETUNE = {
    "objective": "distill",
    "epochs": 4,
    "lr": 3e-3,
    "weight_decay": 0.0,
    "warmup_steps": 2,
}
BERT_TEXT = {"source": "text", "batch_size": 8, "sequence_length": 32}
BERT_RECIPE = {
    "schema_version": 1,
    "model": {
        "task": "sentence-embedding",
        "dims": {
            "batch": {"min": 1, "opt": 8, "max": 16},
            "sequence": {"min": 2, "opt": 32, "max": 64},
        },
    },
    "data": {
        "finetune": {**BERT_TEXT, "samples": 64},
        "verification": {**BERT_TEXT, "samples": 32},
    },
    "passes": [{"name": "finetune", "config": BERT_FINETUNE}],
}


def bert_recipe(directory: Path, model: Path, config: dict | None = None) -> Path:
    """The distillation recipe on a text file of real sentences (standard-library docs);
    ``config`` is laid over the pass's config (``{"epochs": None}`` removes a key)."""
    text = directory / "sentences.txt"
    text.write_text("\n".join(stdlib_sentences()[:200]), encoding="utf-8")
    finetune = {"name": "finetune", "config": merged(BERT_FINETUNE, config or {})}
    recipe = merged(
        BERT_RECIPE,
        {
            "model": {"path": str(model)},
            "data": {"finetune": {"path": str(text)}, "verification": {"path": str(text)}},
            "passes": [finetune],
        },
    )
    return write_recipe(directory, recipe)


def cosine_to_teacher(ir, ctx) -> float:
    values = []
    for batch in ctx.batches("verification"):
        got = ir.run(batch)[0]
        want = ctx.reference(batch)[0]
        values.append(torch.nn.functional.cosine_similarity(got, want, dim=-1))
    return float(torch.cat(values).mean())


def damage(ir, scale: float = 0.1) -> None:
    """Seeded noise on every encoder weight matrix: a model pruning or quantization hurt."""
    generator = torch.Generator().manual_seed(0)
    for name, parameter in ir.module.named_parameters():
        if "encoder" in name and parameter.dim() == 2:
            parameter.data += scale * torch.randn(parameter.shape, generator=generator)
