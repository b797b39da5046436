"""The content-addressed build cache: an output's identity is the hash of all its inputs.

The key covers the normalized recipe, every file of the model, every data file, the plugin
distributions and versions installed, the versions of torch / onnx / onnxruntime / tensorrt /
transformers / torchao / fxopt, the Python sources of fxopt and of each plugin distribution
installed in editable mode (their version does not move when their code does), and the
machine (CPU model: ONNX Runtime's optimized graphs are CPU-specific). Rerunning with the
same key is a no-op: the output directory is checked against its manifest and left alone,
without importing torch. A finished output is also kept under ``<cache>/outputs/<key>`` so a
deleted or replaced output comes back by copy. Builds of one key hold a file lock, so two
concurrent builds of one target do the work once.

Everything here stays free of torch, so the no-op path finishes in well under a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import Output
from .loading import resolve_model
from .recipe import Recipe, load_recipe
from .report import Report
from .run_options import RunOptions
from .staging import StagedDir

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
ENTRY_POINT_GROUP = "fxopt.plugins"


class HashCache:
    """sha256 of files, remembered by (size, mtime) so unchanged files are not re-read."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.known: dict[str, list] = {}
        if path is not None and path.is_file():
            with contextlib.suppress(ValueError, OSError):
                self.known = json.loads(path.read_text(encoding="utf-8"))
        self.dirty = False

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        seen = self.known.get(key)
        if seen and seen[0] == stat.st_size and seen[1] == stat.st_mtime_ns:
            return seen[2]
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        self.known[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
        self.dirty = True
        return digest.hexdigest()

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.known), encoding="utf-8")
        tmp.replace(self.path)


def model_files(model_path: Path) -> list[Path]:
    """Every file that can affect loading: the archive, or all non-hidden files of the dir."""
    if model_path.is_file():
        return [model_path]
    return sorted(
        p
        for p in model_path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_path).parts)
    )


def data_files(recipe: Recipe) -> list[Path]:
    files = []
    for name in ("calibration", "finetune", "verification"):
        split = getattr(recipe.data, name)
        if split is not None and split.path is not None:
            path = recipe.resolve_path(split.path)
            if path.is_file():
                files.append(path)
    return files


def fingerprint(recipe: Recipe, model_path: Path, hashes: HashCache) -> dict[str, Any]:
    """Everything the output depends on, as plain JSON."""
    root = model_path if model_path.is_dir() else model_path.parent
    recipe_json = recipe.model_dump(mode="json")
    recipe_json["model"].pop("path", None)  # where the model is does not matter, what it is does
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
        "sources": editable_sources(
            ["fxopt", *sorted({ep.dist.name for ep in plugins if ep.dist})], hashes
        ),
        "device": {"machine": platform.machine(), "cpu": _cpu_model()},
    }


def editable_sources(names: list[str], hashes: HashCache) -> dict[str, str]:
    """``{distribution: digest of its project's Python files}`` for each named distribution
    installed in editable mode (``pip install -e``, PEP 610's ``dir_info.editable``).

    Someone developing fxopt or a plugin changes its code without changing its version; keyed
    on the version alone, the cache would hand back outputs the old code built.
    """
    found = {}
    for name in names:
        root = _editable_root(name)
        if root is None:
            continue
        digest = hashlib.sha256()
        for file in _project_sources(root):
            digest.update(f"{file.relative_to(root).as_posix()}:{hashes.sha256(file)}\n".encode())
        found[name] = digest.hexdigest()
    return found


def _editable_root(name: str) -> Path | None:
    """The project directory of an editable install of ``name``, else ``None``. Every
    metadata directory of that name is asked: run from a setuptools project's root, its
    ``*.egg-info`` (no ``direct_url.json``) comes before the installed one."""
    for dist in md.distributions(name=name):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            info = json.loads(dist.read_text("direct_url.json") or "null")
            url = info.get("url", "")
            if info.get("dir_info", {}).get("editable") and url.startswith("file://"):
                root = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
                return root if root.is_dir() else None
    return None


def _project_sources(root: Path) -> list[Path]:
    """The ``.py`` files of a project tree, leaving out hidden and build directories and
    virtual environments (a ``.venv`` inside the project holds thousands)."""
    files, pending = [], [root]
    while pending:
        directory = pending.pop()
        with contextlib.suppress(OSError):
            for entry in directory.iterdir():
                if entry.is_file() and entry.suffix == ".py":
                    files.append(entry)
                elif entry.is_dir() and not _skipped_dir(entry):
                    pending.append(entry)
    return sorted(files)


def _skipped_dir(path: Path) -> bool:
    name = path.name
    return (
        name.startswith((".", "__"))
        or name in ("build", "dist", "node_modules")
        or name.endswith(".egg-info")
        or (path / "pyvenv.cfg").exists()
    )


def build_key(components: dict[str, Any]) -> str:
    canonical = json.dumps(components, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class BuildCache:
    def __init__(self, root: Path, *, enabled: bool = True, output: Output | None = None) -> None:
        self.root = root
        self.enabled = enabled
        self.output = output or Output(quiet=True)
        self.hashes = HashCache(root / "file-hashes.json" if enabled else None)

    def fingerprint(self, recipe: Recipe, model_path: Path) -> dict[str, Any]:
        components = fingerprint(recipe, model_path, self.hashes)
        self.hashes.save()
        return components

    def up_to_date(self, target: Path, key: str) -> Report | None:
        """The existing output's report when ``target`` was built from exactly these inputs."""
        if not self.enabled or not self._intact(target, key, trust_stat=True):
            return None
        report = Report(json.loads((target / "report.json").read_text(encoding="utf-8")))
        report.data["cache"] = "up-to-date"
        report.data["out_dir"] = str(target)
        return report

    def restore(self, key: str, target: Path) -> Report | None:
        """Put a cached output in place of ``target``; a damaged entry is dropped, warning."""
        entry = self.root / "outputs" / key
        if not self.enabled or not entry.is_dir():
            return None
        if not self._intact(entry, key, trust_stat=False):
            self.output.warn(f"cache entry {entry} is damaged (hash mismatch); rebuilding")
            shutil.rmtree(entry, ignore_errors=True)
            return None
        staged = StagedDir(target, force=True)
        with staged as tmp:
            _link_tree(entry, tmp)
            staged.commit()
        report = Report(json.loads((target / "report.json").read_text(encoding="utf-8")))
        report.data["cache"] = "restored"
        report.data["out_dir"] = str(target)
        return report

    def store(self, target: Path, key: str) -> None:
        if not self.enabled:
            return
        entry = self.root / "outputs" / key
        if entry.exists():
            return
        tmp = entry.with_name(f".{key}.{os.getpid()}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        _link_tree(target, tmp)
        tmp.rename(entry)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the lock of one build key (a second build of it waits, then finds it done)."""
        if not self.enabled:
            yield
            return
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.output.step("another build of the same inputs is running; waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def info(self) -> dict[str, Any]:
        outputs = sorted((self.root / "outputs").glob("[0-9a-f]*"))
        passes = sorted((self.root / "passes").glob("[0-9a-f]*"))
        size = (
            sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
            if (self.root.exists())
            else 0
        )
        return {
            "path": str(self.root),
            "outputs": len(outputs),
            "pass_results": len(passes),
            "bytes": size,
        }

    def clear(self) -> int:
        removed = 0
        for sub in ("outputs", "passes", "locks"):
            path = self.root / sub
            if path.exists():
                removed += sum(1 for _ in path.iterdir())
                shutil.rmtree(path)
        (self.root / "file-hashes.json").unlink(missing_ok=True)
        return removed

    def _intact(self, directory: Path, key: str, *, trust_stat: bool) -> bool:
        manifest_file = directory / "manifest.json"
        if not manifest_file.is_file():
            return False
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        except ValueError:
            return False
        if manifest.get("build_key") != key:
            return False
        hashes = self.hashes if trust_stat else HashCache(None)
        for name, digest in manifest.get("outputs", {}).items():
            file = directory / name
            if not file.is_file() or hashes.sha256(file) != digest:
                return False
        hashes.save()
        return True


def write_depfile(path: Path, target: Path, inputs: list[Path]) -> None:
    """A Make/Ninja depfile: the output's manifest depends on every input file."""

    def escape(p: Path) -> str:
        return str(p.resolve()).replace(" ", "\\ ")

    lines = [f"{escape(target / 'manifest.json')}:"] + [f"  {escape(p)}" for p in inputs]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" \\\n".join(lines) + "\n", encoding="utf-8")


def _link_tree(source: Path, dest: Path) -> None:
    """Hard-link (or copy, across file systems) every file of ``source`` into ``dest``."""
    for file in source.rglob("*"):
        relative = file.relative_to(source)
        if file.is_dir():
            (dest / relative).mkdir(parents=True, exist_ok=True)
            continue
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, dest / relative)
        except OSError:
            shutil.copy2(file, dest / relative)


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

    @property
    def key(self) -> str:
        return build_key(self.components)

    def finished(self) -> Report | None:
        """The report of an identical earlier build, or ``None`` when there is work to do."""
        done = self.cache.up_to_date(self.target, self.key)
        if done is None and not self.target.exists():
            done = self.cache.restore(self.key, self.target)
        if done is not None:
            # build tools compare timestamps: a reused output must look newer than its inputs
            os.utime(self.target / "manifest.json")
        return done


def plan_build(
    recipe: str | Path | Recipe,
    model_dir: str | Path | None,
    options: RunOptions,
    output: Output,
) -> Build:
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    model_path = resolve_model(recipe, model_dir)
    target = options.out_dir or Path(f"{recipe.label.removesuffix('.toml')}-out")
    # --dump-ir asks to watch the passes run: an answer from the cache would show nothing
    reuse = options.use_cache and options.dump_ir is None
    cache = BuildCache(options.cache_dir, enabled=reuse, output=output)
    build = Build(recipe, model_path, target, cache, cache.fingerprint(recipe, model_path))
    if options.depfile is not None:
        sources = [recipe.source] if recipe.source else []
        write_depfile(
            options.depfile, target, [*sources, *model_files(model_path), *data_files(recipe)]
        )
    return build
