"""The Hugging Face directory loader: ``config.json`` + safetensors (+ tokenizer).

Refuses what would run code or unpickle data unless the user said so: ``*.bin`` checkpoints
need ``--allow-pickle``, ``auto_map`` configs need ``--trust-remote-code``. Safetensors files
are opened and checked before transformers sees them, so a truncated download is reported
as such instead of as a cryptic deep stack. So is ``modules.json`` (sentence-transformers).
Once loaded, the model must be the checkpoint: a ``config.json`` whose sizes disagree with the
weights (a parameter of another shape, layers the weights lack or leave unused) and weights
holding NaN or inf are errors naming the file, the parameter and the fix.
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
from fxopt.engine.recipe import MAX_AXIS, DimRange
from fxopt.engine.specs import IndexRange, InputSpec
from fxopt.plugins.model_checks import check_finite_weights

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
MODULES_FIX = (
    "restore modules.json from the original model (sentence-transformers writes a JSON list "
    'of {"type": ..., "path": ...} objects), or delete it to load the model without its '
    "pooling modules"
)
CONFIG_FIX = (
    "use the config.json saved with these weights (or the weights saved with this config); "
    "save_pretrained() writes both"
)
#: how many parameters a message lists by name
LISTED = 3


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
        modules = _read_modules(path) if task == "sentence-embedding" else None
        model = _from_pretrained(path, task, options, weights)
        check_finite_weights(
            model.state_dict(keep_vars=True).items(),
            file=weights[0] if len(weights) == 1 else path,
            locate=lambda name: _holder(weights, name),
        )
        inputs, dims = _propose_inputs(config, task, path / "config.json")
        module = _wrap(path, model, task, [s.name for s in inputs], modules)
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
            save_assets=lambda out, graph_config: _copy_assets(path, out, config, graph_config),
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


def _from_pretrained(
    path: Path, task: str, options: LoadOptions, weights: list[Path]
) -> torch.nn.Module:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    auto = getattr(transformers, TASKS[task][0])
    try:
        # mismatched shapes are reported by _check_loading, naming the parameter and sizes,
        # instead of transformers' "You set ignore_mismatched_sizes to False" RuntimeError
        model, info = auto.from_pretrained(
            str(path),
            local_files_only=True,
            trust_remote_code=options.trust_remote_code,
            use_safetensors=None if options.allow_pickle else True,
            dtype=torch.float32,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except OSError as exc:
        raise ModelError(f"transformers could not load the model: {exc}", file=path) from None
    except ValueError as exc:
        raise ModelError(
            f"transformers could not load the model for task {task!r}: {exc}",
            file=path,
            fix="set [model] task to what this checkpoint is",
        ) from None
    _check_loading(path, weights, model, info)
    return model.eval()


def _check_loading(
    path: Path, weights: list[Path], model: torch.nn.Module, info: dict[str, Any]
) -> None:
    """The model built from config.json must be the checkpoint, parameter for parameter.

    Refused: a parameter whose shape differs (``hidden_size`` edited), one the weights lack
    inside a layer list (``num_hidden_layers`` raised: the extra layers would be random), and
    weights left unused past the end of a layer list (``num_hidden_layers`` lowered). Other
    missing parameters keep transformers' behaviour (a new task head on a base checkpoint, a
    pooler the checkpoint was saved without: initialized, and unused by most tasks).
    """
    config_file = path / "config.json"
    config = getattr(model, "config", None)
    sizes = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        name, found, expected = mismatched[0][0], list(mismatched[0][1]), list(mismatched[0][2])
        holder = _holder(weights, name)
        differ = [(f, e) for f, e in zip(found, expected, strict=False) if f != e]
        keys = [k for k, v in sizes.items() if type(v) is int and v in {e for _, e in differ}]
        hint = ""
        if keys:
            hint = (
                f"; config.json gives {' or '.join(f'{k} = {sizes[k]}' for k in keys)} where "
                f"the weights were saved with {', '.join(str(f) for f, _ in differ)}"
            )
        more = f" (and {len(mismatched) - 1} more parameters)" if len(mismatched) > 1 else ""
        raise ModelError(
            f"config.json and {_name(holder, weights)} disagree: {name} is {found} in the "
            f"weights, config.json makes it {expected}{more}{hint}",
            file=config_file,
            field=keys[0] if len(keys) == 1 else None,
            fix=CONFIG_FIX,
        )
    missing = sorted(
        k for k in info.get("missing_keys") or [] if _layer_entry(model, k) == "inside"
    )
    if missing:
        raise ModelError(
            f"config.json and {_name(None, weights)} disagree: {len(missing)} parameter(s) "
            f"config.json declares are missing from the weights ({_listed(missing)}); they "
            "would be random",
            file=config_file,
            fix=CONFIG_FIX,
        )
    unused = sorted(
        k for k in info.get("unexpected_keys") or [] if _layer_entry(model, k) == "past"
    )
    if unused:
        raise ModelError(
            f"config.json and {_name(_holder(weights, unused[0]), weights)} disagree: "
            f"{len(unused)} weight(s) have no place in the model config.json describes "
            f"({_listed(unused)}); they would be dropped",
            file=config_file,
            fix=CONFIG_FIX,
        )


def _listed(names: list[str]) -> str:
    more = f", ... {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def _name(holder: Path | None, weights: list[Path]) -> str:
    if holder is not None:
        return holder.name
    return weights[0].name if len(weights) == 1 else f"the weights ({len(weights)} files)"


def _layer_entry(model: torch.nn.Module, key: str) -> str | None:
    """Where parameter ``key`` lies relative to the model's layer lists (``ModuleList``):
    ``"inside"`` an entry the model has, ``"past"`` the end of one (``encoder.layer.5`` in a
    2-layer model), or ``None``: outside any (a head, a pooler, a module the model lacks)."""
    owner: torch.nn.Module = model
    inside = False
    for part in key.split(".")[:-1]:
        if isinstance(owner, torch.nn.ModuleList) and part.isdigit():
            if int(part) >= len(owner):
                return "past"
            child, inside = owner[int(part)], True
        else:
            child = getattr(owner, part, None) if part.isidentifier() else None
        if not isinstance(child, torch.nn.Module):
            return None
        owner = child
    return "inside" if inside else None


def _holder(weights: list[Path], name: str) -> Path | None:
    """The weight file holding parameter ``name`` (keys may carry a base-model prefix)."""
    if len(weights) == 1:
        return weights[0]
    from safetensors import safe_open

    for file in weights:
        if file.suffix != ".safetensors":
            continue
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
        if any(k == name or k.endswith("." + name) or name.endswith("." + k) for k in keys):
            return file
    return None


def _propose_inputs(
    config: dict[str, Any], task: str, config_file: Path
) -> tuple[list[InputSpec], dict]:
    batch = DimRange(min=1, opt=8, max=64)
    if task == "image-classification" or "image_size" in config:
        size = config.get("image_size", 224)
        channels = config.get("num_channels", 3)
        spec = InputSpec("pixel_values", "float32", ("batch", channels, size, size), -1.0, 1.0)
        return [spec], {"batch": batch}
    vocab = int(config.get("vocab_size", 2))
    # a long-context model's own limit may exceed what a recipe may declare; never below 2
    max_len = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    max_len = max(2, min(max_len, MAX_AXIS))
    ids = IndexRange(vocab, str(config_file), "vocab_size") if "vocab_size" in config else None
    inputs = [
        InputSpec("input_ids", "int64", ("batch", "sequence"), 0, vocab, ids),
        InputSpec("attention_mask", "int64", ("batch", "sequence"), 1, 2),
    ]
    types = int(config.get("type_vocab_size", 0))
    if types > 1:
        kinds = IndexRange(types, str(config_file), "type_vocab_size")
        inputs.append(InputSpec("token_type_ids", "int64", ("batch", "sequence"), 0, 1, kinds))
    sequence = DimRange(min=2, opt=min(128, max_len), max=max_len)
    return inputs, {"batch": batch, "sequence": sequence}


def _read_modules(path: Path) -> list[dict[str, Any]] | None:
    """sentence-transformers' ``modules.json``: a list of ``{"type": ..., "path": ...}``."""
    file = path / "modules.json"
    if not file.is_file():
        return None
    try:
        modules = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"not valid JSON: {exc}", file=file, fix=MODULES_FIX) from None
    if not isinstance(modules, list):
        raise ModelError(
            f"must hold a JSON list of modules, not a {type(modules).__name__}",
            file=file,
            fix=MODULES_FIX,
        )
    for i, module in enumerate(modules):
        if not isinstance(module, dict):
            raise ModelError(
                f"entry {i} must be an object with type and path, not {module!r}",
                file=file,
                fix=MODULES_FIX,
            )
        for key in ("type", "path"):
            if key in module and not isinstance(module[key], str):
                raise ModelError(
                    f"entry {i}: {key} must be a string, not {module[key]!r}",
                    file=file,
                    fix=MODULES_FIX,
                )
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            _pooling_mode(path / module.get("path", ""))  # a broken pooling config fails now
    return modules


def _wrap(
    path: Path,
    model: torch.nn.Module,
    task: str,
    names: list[str],
    modules: list[dict[str, Any]] | None,
) -> TaskModule:
    if task != "sentence-embedding":
        return TaskModule(model, names, TASKS[task][1][0])
    pooling, normalize = "mean", False
    if modules is not None:
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pooling = _pooling_mode(path / m.get("path", ""))
    return SentenceEmbedding(model, names, pooling, normalize)


def _pooling_mode(directory: Path) -> str:
    file = directory / "config.json"
    if not file.is_file():
        return "mean"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"not valid JSON: {exc}", file=file, fix="restore the pooling module's config.json"
        ) from None
    if not isinstance(config, dict):
        raise ModelError(
            "must hold a JSON object", file=file, fix="restore the pooling module's config.json"
        )
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


def _copy_assets(
    source: Path, out: Path, config: dict[str, Any], graph_config: dict[str, Any]
) -> list[str]:
    """Copy the config and tokenizer files so the output directory is self-describing.

    ``config.json`` is written anew when a pass changed sizes (``prune.structured`` records
    them in the graph's config): it must describe the weights it ships with, or the output
    cannot be reloaded.
    """
    written = []
    for name in ("config.json", *TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
            written.append(name)
    if "config.json" in written and graph_config != config:
        text = json.dumps(graph_config, indent=2) + "\n"
        (out / "config.json").write_text(text, encoding="utf-8")
    return written


@hookimpl
def fxopt_register_loaders(registry) -> None:
    registry.register(HuggingFaceLoader.name, HuggingFaceLoader)
