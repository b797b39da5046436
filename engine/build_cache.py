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

from .cache_entries import (
    SEAL,
    check_seal,
    discard,
    file_sha256,
    mark_used,
    new_entry,
    read_json_object,
)
from .cache_root import CacheRoot, Location, locate
from .console import Output
from .errors import OutputError
from .loading import resolve_model
from .output_guard import (
    Protected,
    Seen,
    check_depfile,
    check_parent,
    check_placement,
    check_replaceable,
    needed_bytes,
    relative_files,
)
from .plugin_host import ENTRY_POINT_GROUP
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
#: Linux's ioctl that clones a file's blocks (copy-on-write file systems: btrfs, xfs)
FICLONE = 0x40049409


class HashCache:
    """sha256 of files, remembered by their stat so unchanged files are not re-read.

    The remembered stat is (size, mtime, ctime, inode): a file rewritten in place with its
    size and mtime put back still gets a new ctime, which no user call can set, so it is
    hashed again. ``trust_stat=False`` (``--verify-inputs``) re-hashes every file.
    """

    def __init__(self, path: Path | None, *, trust_stat: bool = True) -> None:
        self.path = path
        self.trust_stat = trust_stat
        self.known: dict[str, list] = {}
        if path is not None:
            known = read_json_object(path) or {}
            self.known = {k: v for k, v in known.items() if _stat_record(v)}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        seen = self.known.get(key)
        if self.trust_stat and seen and seen[:4] == signature:
            return seen[4]
        digest = file_sha256(file)
        self.known[key] = [*signature, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        """Remember the hashes; a cache that cannot be written costs re-hashing, nothing more."""
        if self.path is None or not self.dirty:
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.known), encoding="utf-8")
            tmp.replace(self.path)
        except OSError:
            tmp.unlink(missing_ok=True)


def _stat_record(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 5
        and all(isinstance(v, int) for v in value[:4])
        and isinstance(value[4], str)
    )


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
    """Finished outputs by build key, under ``<root>/outputs``; ``root=None``: no cache."""

    def __init__(self, root: Path | None, *, output: Output | None = None, hashes=None) -> None:
        self.root = root
        self.enabled = root is not None
        self.output = output or Output(quiet=True)
        self.hashes = hashes or HashCache(root / "file-hashes.json" if root else None)

    def fingerprint(self, recipe: Recipe, model_path: Path) -> dict[str, Any]:
        components = fingerprint(recipe, model_path, self.hashes)
        self.hashes.save()
        return components

    def up_to_date(self, target: Path, key: str) -> Report | None:
        """The existing output's report when ``target`` was built from exactly these inputs."""
        if not self.enabled or not self._intact(target, key, self.hashes):
            return None
        report = _read_report(target)
        if report is None:
            return None
        report.data["cache"] = "up-to-date"
        report.data["out_dir"] = str(target)
        return report

    def restore(self, key: str, target: Path) -> Report | None:
        """Put a cached output in place of (absent) ``target``; a damaged entry is dropped."""
        if not self.enabled:
            return None
        entry = self.root / "outputs" / key
        if not entry.is_dir():
            return None
        problem = check_seal(entry)
        if problem is None and not self._intact(entry, key, HashCache(None)):
            problem = "its manifest does not match its files"
        if problem is not None:
            self.output.warn(f"cache entry {entry} is damaged ({problem}); rebuilding")
            discard(entry)
            return None
        mark_used(entry)
        staged = StagedDir(target, Seen(exists=False))
        with staged as tmp:
            copy_tree(entry, tmp, skip={SEAL})
            staged.commit()
        report = _read_report(target)
        if report is not None:
            report.data["cache"] = "restored"
            report.data["out_dir"] = str(target)
        return report

    def store(self, target: Path, key: str) -> None:
        """Keep a copy of a finished output; a cache that cannot be written is only a warning."""
        if not self.enabled:
            return
        entry = self.root / "outputs" / key
        if entry.exists():
            return
        try:
            with new_entry(entry) as tmp:
                copy_tree(target, tmp)
            CacheRoot(self.root).evict(keep=entry, output=self.output)
        except OSError as exc:
            self.output.warn(f"could not keep the output in the cache {self.root}: {exc}")

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

    def _intact(self, directory: Path, key: str, hashes: HashCache) -> bool:
        manifest = read_json_object(directory / "manifest.json")
        if manifest is None or manifest.get("build_key") != key:
            return False
        outputs = manifest.get("outputs")
        if not isinstance(outputs, dict):
            return False
        for name, digest in outputs.items():
            file = directory / name
            if not file.is_file() or hashes.sha256(file) != digest:
                return False
        hashes.save()
        return True


def open_cache(location: Location, output: Output) -> Path | None:
    """The usable cache directory, or ``None`` (with a warning) to build without one.

    A directory the user named (``--cache-dir``, ``FXOPT_CACHE_DIR``) that cannot serve is an
    error naming it; the default location failing only costs the cache.
    """
    if location.path is None:
        output.warn(f"building without a cache: {location.reason}; set FXOPT_CACHE_DIR")
        return None
    root = CacheRoot(location.path)
    problem = root.foreign()
    if problem is None:
        try:
            root.ensure()
        except OSError as exc:
            problem = f"cannot be written ({exc.strerror or exc})"
    if problem is None:
        return location.path
    if location.explicit:
        raise OutputError(
            f"cannot use this as the cache directory: it {problem}",
            file=location.path,
            field="--cache-dir / FXOPT_CACHE_DIR",
            fix="name a writable directory of its own (or a new one), or pass --no-cache",
        )
    output.warn(f"building without a cache: {location.path} {problem}")
    return None


def copy_tree(source: Path, dest: Path, skip: frozenset[str] | set[str] = frozenset()) -> None:
    """Copy every file of ``source`` into ``dest``: never a hard link, so editing an output
    can never edit the cache; a copy-on-write clone where the file system has one."""
    for name in relative_files(source):
        if name not in skip:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            _clone_file(source / name, dest / name)


def _clone_file(source: Path, dest: Path) -> None:
    with source.open("rb") as src, dest.open("wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return
        except OSError:
            pass
        shutil.copyfileobj(src, dst, 1 << 20)


def _read_report(directory: Path) -> Report | None:
    data = read_json_object(directory / "report.json")
    return Report(data) if data is not None else None


def write_depfile(path: Path, target: Path, inputs: list[Path]) -> None:
    """A Make/Ninja depfile: the output's manifest depends on every input file."""

    def escape(p: Path) -> str:
        return str(p.resolve()).replace(" ", "\\ ")

    lines = [f"{escape(target / 'manifest.json')}:"] + [f"  {escape(p)}" for p in inputs]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" \\\n".join(lines) + "\n", encoding="utf-8")


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
    components = cache.fingerprint(recipe, model_path)
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
    """What ``-o`` must keep clear of (see :mod:`.output_guard`)."""
    found = [Protected("model", model_path, whole=True)]
    if recipe.source is not None:
        found.append(Protected("recipe's folder", Path(recipe.source).parent))
    found += [Protected("data file", path) for path in data_files(recipe)]
    if cache is not None:
        found.append(Protected("cache directory", cache, whole=True))
    return found
