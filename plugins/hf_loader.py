"""The Hugging Face directory loader: ``config.json`` + safetensors (+ tokenizer).

Refuses what would run code or unpickle data unless the user said so: ``*.bin`` checkpoints
need ``--allow-pickle``, ``auto_map`` configs need ``--trust-remote-code``. Safetensors files
are opened and checked before transformers sees them, so a truncated download is reported
as such instead of as a cryptic deep stack.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from fxopt.engine import hookimpl
from fxopt.engine.errors import ModelError
from fxopt.engine.loading import LoadedModel, Loader, LoadOptions
from fxopt.engine.recipe import DimRange
from fxopt.engine.specs import InputSpec

from .tasks import POOLING_MODES, TASKS, SentenceEmbedding, TaskModule

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
)


class HuggingFaceLoader(Loader):
    name = "huggingface"

    def can_load(self, path: Path) -> bool:
        return path.is_dir()

    def load(self, path: Path, options: LoadOptions) -> LoadedModel:
        config = _read_config(path)
        if "auto_map" in config and not options.trust_remote_code:
            raise ModelError(
                "this model's config.json asks to run code shipped with the model (auto_map)",
                file=path / "config.json",
                field="auto_map",
                fix="read that code, then pass --trust-remote-code if you trust it",
            )
        weights = _weight_files(path, options.allow_pickle)
        task = options.task or _infer_task(path, config)
        if task not in TASKS:
            raise ModelError(
                f"unknown task {task!r}",
                file=path,
                field="model.task",
                fix=f"use one of: {', '.join(TASKS)}",
            )
        model = _from_pretrained(path, task, options)
        inputs, dims = _propose_inputs(config, task)
        module = _wrap(path, model, task, [s.name for s in inputs])
        tokenizer = _tokenizer(path) if "pixel_values" not in {s.name for s in inputs} else None
        return LoadedModel(
            module=module.eval(),
            task=task,
            inputs=inputs,
            dims=dims,
            output_names=TASKS[task][1],
            files=sorted({*weights, *_json_files(path)}),
            config=config,
            tokenize=_tokenize_fn(tokenizer, [s.name for s in inputs]) if tokenizer else None,
            save_assets=lambda out: _copy_assets(path, out),
        )


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise ModelError(
            "not a Hugging Face model directory: config.json is missing",
            file=path,
            fix="pass a directory saved with save_pretrained(), or a torch.export .pt2 file",
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"not valid JSON: {exc}", file=file) from None
    if not isinstance(config, dict):
        raise ModelError("must hold a JSON object", file=file)
    return config


def _weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        for file in safetensors:
            _check_safetensors(file)
        return safetensors
    pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled and not allow_pickle:
        raise ModelError(
            f"only pickle checkpoints found ({', '.join(p.name for p in pickled)}); loading "
            "pickle can run arbitrary code",
            file=path,
            fix="convert the weights to safetensors, or pass --allow-pickle if you trust the file",
        )
    if not pickled:
        raise ModelError(
            "no weights found (*.safetensors)",
            file=path,
            fix="save the model with save_pretrained(..., safe_serialization=True)",
        )
    return pickled


def _check_safetensors(file: Path) -> None:
    """Open every tensor's header and check the file holds all the bytes it declares."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
        with file.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        declared = (
            8
            + header_len
            + max(
                (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
            )
        )
        if file.stat().st_size < declared:
            raise ValueError(f"{file.stat().st_size} bytes, the header declares {declared}")
        if not keys:
            raise ValueError("it holds no tensors")
    except Exception as exc:
        raise ModelError(
            f"corrupt or truncated safetensors file: {exc}",
            file=file,
            fix="re-download or re-save the weights",
        ) from None


def _json_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*.json") if p.is_file()] + [
        p for p in (path / n for n in TOKENIZER_FILES) if p.is_file()
    ]


def _infer_task(path: Path, config: dict[str, Any]) -> str:
    if (path / "modules.json").is_file():
        return "sentence-embedding"
    arch = " ".join(config.get("architectures") or [])
    for suffix, task in (
        ("ForSequenceClassification", "sequence-classification"),
        ("ForImageClassification", "image-classification"),
        ("ForCausalLM", "causal-lm"),
        ("LMHeadModel", "causal-lm"),
    ):
        if suffix in arch:
            return task
    return "feature-extraction"


def _from_pretrained(path: Path, task: str, options: LoadOptions) -> torch.nn.Module:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    auto = getattr(transformers, TASKS[task][0])
    try:
        model = auto.from_pretrained(
            str(path),
            local_files_only=True,
            trust_remote_code=options.trust_remote_code,
            use_safetensors=None if options.allow_pickle else True,
            dtype=torch.float32,
        )
    except OSError as exc:
        raise ModelError(f"transformers could not load the model: {exc}", file=path) from None
    except ValueError as exc:
        raise ModelError(
            f"transformers could not load the model for task {task!r}: {exc}",
            file=path,
            fix="set [model] task to what this checkpoint is",
        ) from None
    return model.eval()


def _propose_inputs(config: dict[str, Any], task: str) -> tuple[list[InputSpec], dict]:
    batch = DimRange(min=1, opt=8, max=64)
    if task == "image-classification" or "image_size" in config:
        size = config.get("image_size", 224)
        channels = config.get("num_channels", 3)
        spec = InputSpec("pixel_values", "float32", ("batch", channels, size, size), -1.0, 1.0)
        return [spec], {"batch": batch}
    vocab = int(config.get("vocab_size", 2))
    max_len = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    inputs = [
        InputSpec("input_ids", "int64", ("batch", "sequence"), 0, vocab),
        InputSpec("attention_mask", "int64", ("batch", "sequence"), 1, 2),
    ]
    if int(config.get("type_vocab_size", 0)) > 1:
        inputs.append(InputSpec("token_type_ids", "int64", ("batch", "sequence"), 0, 1))
    sequence = DimRange(min=2, opt=min(128, max_len), max=max_len)
    return inputs, {"batch": batch, "sequence": sequence}


def _wrap(path: Path, model: torch.nn.Module, task: str, names: list[str]) -> TaskModule:
    if task != "sentence-embedding":
        return TaskModule(model, names, TASKS[task][1][0])
    pooling, normalize = "mean", False
    modules_file = path / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pooling = _pooling_mode(path / m.get("path", ""))
    return SentenceEmbedding(model, names, pooling, normalize)


def _pooling_mode(directory: Path) -> str:
    file = directory / "config.json"
    if not file.is_file():
        return "mean"
    config = json.loads(file.read_text(encoding="utf-8"))
    for mode in POOLING_MODES:
        if config.get(f"pooling_mode_{mode}_tokens") or config.get(f"pooling_mode_{mode}_token"):
            return mode
    return "mean"


def _tokenizer(path: Path) -> Any:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _tokenize_fn(tokenizer: Any, names: list[str]):
    def tokenize(texts: list[str], sequence_length: int) -> dict[str, torch.Tensor]:
        encoded = tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=sequence_length,
            return_tensors="pt",
        )
        out = {}
        for name in names:
            if name in encoded:
                out[name] = encoded[name].to(torch.int64)
            elif name == "token_type_ids":
                out[name] = torch.zeros_like(encoded["input_ids"])
        return out

    return tokenize


def _copy_assets(source: Path, out: Path) -> list[str]:
    """Copy config and tokenizer files so the output directory is self-describing."""
    written = []
    for name in ("config.json", *TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
            written.append(name)
    return written


@hookimpl
def fxopt_register_loaders(registry) -> None:
    registry.register(HuggingFaceLoader.name, HuggingFaceLoader)
