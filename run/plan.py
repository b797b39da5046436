"""Planning a run: the recipe, the model, where the output goes and the cache key, once.

Everything here stays free of torch, so the no-op path (an identical earlier build) finishes
in well under a second. The key covers the normalized recipe, every file of the model, every
data file, the plugin distributions and versions installed, the versions of torch / onnx /
onnxruntime / tensorrt / transformers / torchao / fxopt, the Python sources of fxopt and of
each plugin distribution (an editable install's version does not move when its code does, nor a
rebuilt wheel's), and the machine (CPU model: ONNX Runtime's optimized graphs are CPU-specific).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxopt.engine.console import Output
from fxopt.engine.errors import ModelError, RecipeError
from fxopt.engine.loading import BUILTIN_SCHEME, PACKAGE_SCHEME, resolve_model_path
from fxopt.engine.plugin_host import ENTRY_POINT_GROUP
from fxopt.report import Report
from fxopt.store.hashes import HashCache, installed_sources, model_files
from fxopt.store.output_guard import (
    Protected,
    Seen,
    check_depfile,
    check_parent,
    check_placement,
    check_replaceable,
    needed_bytes,
)
from fxopt.store.outputs import BuildCache, open_cache, write_depfile
from fxopt.store.root import locate

from .options import RunOptions
from .recipe import Recipe, load_recipe

KEY_VERSIONS = (
    "fxopt",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "transformers",
    "torchao",
    "tensorrt",
)


def data_files(recipe: Recipe) -> list[Path]:
    files = []
    for split in recipe.data.splits().values():
        if split.path is not None:
            path = recipe.resolve_path(split.path)
            if path.is_file():
                files.append(path)
    return files


def fingerprint(recipe: Recipe, model_path: Path, hashes: HashCache) -> dict[str, Any]:
    """Everything the output depends on, as plain JSON."""
    root = model_path if model_path.is_dir() else model_path.parent
    recipe_json = recipe.model_dump(mode="json")
    recipe_json["model"].pop("path", None)  # where the model is does not matter, what it is does
    recipe_json.pop("search", None)  # what `optimize search` would vary is not this build
    plugins = list(md.entry_points(group=ENTRY_POINT_GROUP))
    return {
        "recipe": recipe_json,
        "model": {str(p.relative_to(root)): hashes.sha256(p) for p in model_files(model_path)},
        "data": {p.name: hashes.sha256(p) for p in data_files(recipe)},
        "plugins": sorted(
            f"{ep.dist.name if ep.dist else '?'}=={ep.dist.version if ep.dist else '?'}:{ep.name}"
            for ep in plugins
        ),
        "versions": _versions(),
        "sources": installed_sources(
            ["fxopt", *sorted({ep.dist.name for ep in plugins if ep.dist})], hashes
        ),
        "device": {"machine": platform.machine(), "cpu": _cpu_model()},
    }


def build_key(components: dict[str, Any]) -> str:
    canonical = json.dumps(components, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _versions() -> dict[str, str]:
    found = {}
    for name in KEY_VERSIONS:
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    return found


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


@dataclass
class Build:
    """A run's inputs resolved far enough to know its cache key (no torch needed)."""

    recipe: Recipe
    model_path: Path
    target: Path
    cache: BuildCache
    components: dict[str, Any]
    force: bool = False
    #: this process's rank under ``torchrun`` (``RANK``): rank 0 alone writes and speaks
    rank: int = 0

    @property
    def key(self) -> str:
        return build_key(self.components)

    @property
    def cache_dir(self) -> Path | None:
        """The cache every stage may use (``None``: ``--no-cache``, or none usable)."""
        return self.cache.root

    def finished(self) -> Report | None:
        """The report of an identical earlier build, or ``None`` when there is work to do."""
        done = self.cache.up_to_date(self.target, self.key)
        if done is None and not os.path.lexists(self.target):
            done = self.cache.restore(self.key, self.target)
        if done is not None:
            # build tools compare timestamps: a reused output must look newer than its inputs
            os.utime(self.target / "manifest.json")
        return done

    def claim(self) -> Seen:
        """What is at the target now; refused unless this run may replace it (``--force``,
        and only an earlier fxopt output)."""
        return check_replaceable(self.target, force=self.force)


def plan_build(
    recipe: str | Path | Recipe,
    model_dir: str | Path | None,
    options: RunOptions,
    output: Output,
) -> Build:
    """Resolve the inputs, check where the output goes (before any work), open the cache."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    model_path = resolve_model(recipe, model_dir)
    target = options.out_dir or Path(f"{recipe.label.removesuffix('.toml')}-out")
    location = locate(options.cache_dir)
    inputs = model_files(model_path)
    protected = protected_paths(recipe, model_path, location.path)
    check_placement(target, protected, what="output directory")
    if options.depfile is not None:
        check_placement(options.depfile, protected, flag="--depfile", what="depfile")
        check_depfile(options.depfile)
    if options.dump_ir is not None:
        check_placement(options.dump_ir, protected, flag="--dump-ir", what="IR dump directory")
    check_parent(target, needed_bytes(inputs))
    # --dump-ir asks to watch the passes run: an answer from the cache would show nothing
    reuse = options.use_cache and options.dump_ir is None
    root = open_cache(location, output) if reuse else None
    hashes = HashCache(
        root / "file-hashes.json" if root else None, trust_stat=not options.verify_inputs
    )
    cache = BuildCache(root, output=output, hashes=hashes)
    components = fingerprint(recipe, model_path, hashes)
    hashes.save()
    build = Build(recipe, model_path, target, cache, components, options.force, _rank())
    if options.depfile is not None:
        sources = [recipe.source] if recipe.source else []
        write_depfile(options.depfile, target, [*sources, *inputs, *data_files(recipe)])
    return build


def _rank() -> int:
    """This process's rank under ``torchrun``; 0 when run alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def protected_paths(recipe: Recipe, model_path: Path, cache: Path | None) -> list[Protected]:
    """What ``-o`` must keep clear of (see :mod:`fxopt.store.output_guard`)."""
    found = [Protected("model", model_path, whole=True)]
    if recipe.source is not None:
        found.append(Protected("recipe's folder", Path(recipe.source).parent))
    found += [Protected("data file", path) for path in data_files(recipe)]
    if cache is not None:
        found.append(Protected("cache directory", cache, whole=True))
    return found


def resolve_model(recipe: Recipe, model_dir: str | Path | None) -> Path:
    """The model a run optimizes: ``MODEL_DIR`` from the command line, else the recipe's
    ``[model] path`` (relative to the recipe); ``pkg:`` and ``builtin:`` names resolved."""
    if model_dir is not None and str(model_dir).startswith((BUILTIN_SCHEME, PACKAGE_SCHEME)):
        path = resolve_model_path(str(model_dir), recipe_dir=None, field="MODEL_DIR")
    elif model_dir is not None:
        path = Path(model_dir)
    elif recipe.model.path is not None:
        source = recipe.source.parent if recipe.source else None
        path = resolve_model_path(recipe.model.path, recipe_dir=source, field="model.path")
    else:
        raise RecipeError(
            "no model given",
            file=recipe.label,
            field="model.path",
            fix="pass MODEL_DIR on the command line, or set [model] path in the recipe",
        )
    if not path.exists():
        raise ModelError(
            "model path not found", file=path, fix="pass an existing model directory or .pt2 file"
        )
    return path
