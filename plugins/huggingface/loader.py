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

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from fxopt.engine import hookimpl
from fxopt.engine.config import MAX_AXIS, DimRange
from fxopt.engine.errors import ModelError
from fxopt.engine.loading import LoadedModel, Loader, LoadOptions
from fxopt.engine.specs import IndexRange, InputSpec
from fxopt.plugins.model_checks import check_finite_weights

from . import causal_lm
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
        if task == "causal-lm":  # before any work: is the cache of this architecture known?
            causal_lm.check_supported(config, path / "config.json")
        modules = _read_modules(path) if task == "sentence-embedding" else None
        model = _from_pretrained(path, task, options, weights, _auto_class(config, task))
        check_finite_weights(
            model.state_dict(keep_vars=True).items(),
            file=weights[0] if len(weights) == 1 else path,
            locate=lambda name: _holder(weights, name),
        )
        if task == "causal-lm":
            inputs, dims, outputs = causal_lm.propose(config, path / "config.json")
            module = causal_lm.CausalLMWithCache(model, causal_lm.cache_layout(config)[0])
        else:
            inputs, dims = _propose_inputs(
                config, task, path / "config.json", _forward_names(model)
            )
            module = _wrap(path, model, task, [s.name for s in inputs], modules)
            outputs = TASKS[task][1]
        tokenizer = _tokenizer(path) if "pixel_values" not in {s.name for s in inputs} else None
        tokenize = _tokenize_fn(tokenizer, [s.name for s in inputs]) if tokenizer else None
        if tokenize is not None and task == "causal-lm":
            causal_lm.check_tokenizer(tokenizer, path)
            tokenize = causal_lm.with_cache_inputs(tokenize, config)
        return LoadedModel(
            module=module.eval(),
            task=task,
            inputs=inputs,
            dims=dims,
            output_names=outputs,
            files=sorted({*weights, *_json_files(path)}),
            config=config,
            tokenize=tokenize,
            save_assets=lambda out, graph_config: _copy_assets(path, out, config, graph_config),
            model_axes=causal_lm.model_axes(config) if task == "causal-lm" else {},
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


def _auto_class(config: dict[str, Any], task: str) -> str:
    """The transformers auto class that builds what the checkpoint is, for ``task``.

    The features of a text model are its encoder's: for a family whose encoder transformers
    builds on its own (``T5EncoderModel``; ``AutoModel`` would build the whole ``T5Model``,
    whose decoder the weights of an encoder checkpoint lack and whose forward needs decoder
    inputs), an encoder checkpoint and the encoder of an encoder-decoder checkpoint load with
    ``AutoModelForTextEncoding``.
    """
    name = TASKS[task][0]
    if name != "AutoModel":
        return name
    from transformers.models.auto import modeling_auto

    model_type = config.get("model_type")
    encoder = modeling_auto.MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES.get(model_type)
    if encoder is None or encoder == modeling_auto.MODEL_MAPPING_NAMES.get(model_type):
        return name
    if config.get("is_encoder_decoder") or encoder in (config.get("architectures") or []):
        return "AutoModelForTextEncoding"
    return name


def _from_pretrained(
    path: Path, task: str, options: LoadOptions, weights: list[Path], auto_class: str
) -> torch.nn.Module:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    auto = getattr(transformers, auto_class)
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


#: the image side proposed when config.json gives none (conv nets take any size; a recipe
#: sets its own with [model.inputs.pixel_values] shape)
DEFAULT_IMAGE_SIZE = 224


def _forward_names(model: torch.nn.Module) -> set[str] | None:
    """The keyword arguments ``model.forward`` takes by name; ``None`` when it takes any
    (``**kwargs`` only), so the inputs cannot be read from it."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    named = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return named if named & {"input_ids", "pixel_values"} else None


def _propose_inputs(
    config: dict[str, Any], task: str, config_file: Path, accepted: set[str] | None = None
) -> tuple[list[InputSpec], dict]:
    """The inputs the model is called with, by name: the ones its ``forward`` takes
    (``accepted``; read from config.json when the signature does not say).

    Images: ``pixel_values`` float32 ``[batch, num_channels, image_size, image_size]`` in
    [-1, 1], the sizes from config.json (``num_channels`` else 3, ``image_size`` an int or
    ``[height, width]``, else :data:`DEFAULT_IMAGE_SIZE`); text: ``input_ids`` (in the
    vocabulary), ``attention_mask`` and ``token_type_ids`` (when ``type_vocab_size`` > 1),
    each only if ``forward`` takes it.
    """
    batch = DimRange(min=1, opt=8, max=64)
    if accepted is not None:
        images = "pixel_values" in accepted and "input_ids" not in accepted
    else:
        images = task == "image-classification" or "image_size" in config
    if images:
        height, width = _image_size(config, config_file)
        channels = config.get("num_channels", 3)
        shape = ("batch", channels, height, width)
        return [InputSpec("pixel_values", "float32", shape, -1.0, 1.0)], {"batch": batch}
    vocab = int(config.get("vocab_size", 2))
    # a long-context model's own limit may exceed what a recipe may declare; never below 2
    max_len = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    max_len = max(2, min(max_len, MAX_AXIS))
    ids = IndexRange(vocab, str(config_file), "vocab_size") if "vocab_size" in config else None
    inputs = [InputSpec("input_ids", "int64", ("batch", "sequence"), 0, vocab, ids)]
    if accepted is None or "attention_mask" in accepted:
        inputs.append(InputSpec("attention_mask", "int64", ("batch", "sequence"), 1, 2))
    types = int(config.get("type_vocab_size") or 0)
    if types > 1 and (accepted is None or "token_type_ids" in accepted):
        kinds = IndexRange(types, str(config_file), "type_vocab_size")
        inputs.append(InputSpec("token_type_ids", "int64", ("batch", "sequence"), 0, 1, kinds))
    sequence = DimRange(min=2, opt=min(128, max_len), max=max_len)
    return inputs, {"batch": batch, "sequence": sequence}


def _image_size(config: dict[str, Any], config_file: Path) -> tuple[int, int]:
    """``(height, width)`` from config.json's ``image_size`` (an int, or a pair)."""
    size = config.get("image_size", DEFAULT_IMAGE_SIZE)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return size[0], size[1]
    raise ModelError(
        f"image_size must be a positive int or [height, width], not {size!r}",
        file=config_file,
        field="image_size",
        fix="correct image_size, or set the input's shape in the recipe: [model.inputs."
        'pixel_values] shape = ["batch", 3, 224, 224]',
    )


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

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoders often ship without one
    return tokenizer


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
