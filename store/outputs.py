"""Finished outputs kept by build key, so a rerun of the same inputs is a no-op or a copy.

A finished output is kept under ``<cache>/outputs/<key>``; rerunning with the same key checks
the output directory against its manifest and leaves it alone, without importing torch, and a
deleted or replaced output comes back by copy. Builds of one key hold a file lock, so two
concurrent builds of one target do the work once. Every entry is sealed and checked on read.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterator
from pathlib import Path

from fxopt.engine.console import Output
from fxopt.engine.errors import OutputError
from fxopt.report import Report

from .entries import SEAL, check_seal, discard, mark_used, new_entry, read_json_object
from .hashes import HashCache
from .output_guard import Seen, relative_files
from .root import CacheRoot, Location
from .staging import StagedDir

#: Linux's ioctl that clones a file's blocks (copy-on-write file systems: btrfs, xfs)
FICLONE = 0x40049409


class BuildCache:
    """Finished outputs by build key, under ``<root>/outputs``; ``root=None``: no cache."""

    def __init__(self, root: Path | None, *, output: Output | None = None, hashes=None) -> None:
        self.root = root
        self.enabled = root is not None
        self.output = output or Output(quiet=True)
        self.hashes = hashes or HashCache(root / "file-hashes.json" if root else None)

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
