"""File hashes: what an output's identity is computed from.

Hashing a 90 MB model takes a second; a rerun that changed nothing must take less, so hashes are
remembered by the file's stat (:class:`HashCache`). The Python sources of fxopt and its plugins
are hashed as well: an editable install's code moves without its version moving, and two wheels
of one version (a rebuild, a local fix) hold different code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json
import os
import urllib.parse
from pathlib import Path

from .atomic import write_atomic
from .entries import file_sha256, read_json_object


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
        with contextlib.suppress(OSError):
            write_atomic(self.path, json.dumps(self.known))


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


def installed_sources(names: list[str], hashes: HashCache) -> dict[str, str]:
    """``{distribution: digest of its Python files}`` for each named distribution: the
    project's files for an editable install (``pip install -e``, PEP 610's
    ``dir_info.editable``), else the ``.py`` files its ``RECORD`` lists (a distribution
    with neither is left out: nothing says which files are its code).

    Someone developing fxopt or a plugin changes its code without changing its version, and a
    wheel rebuilt or patched in place keeps its version too; keyed on the version alone, the
    cache would hand back outputs the old code built.
    """
    found = {}
    for name in names:
        root, files = _sources_of(name)
        if not files:
            continue
        base = root or Path(os.path.commonpath([str(f.parent) for f in files]))
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.relative_to(base).as_posix()}:{hashes.sha256(file)}\n".encode())
        found[name] = digest.hexdigest()
    return found


def _sources_of(name: str) -> tuple[Path | None, list[Path]]:
    """``(project root or None, .py files)`` of the distribution ``name`` that imports: the
    first metadata directory of that name on the path that says where its code is. One
    without ``direct_url.json`` or ``RECORD`` is passed over: run from a setuptools
    project's root, its ``*.egg-info`` comes before the installed distribution."""
    for dist in md.distributions(name=name):
        editable = _editable_url(dist)
        if editable is not None:
            root = Path(urllib.parse.unquote(urllib.parse.urlparse(editable).path))
            return (root, _project_sources(root)) if root.is_dir() else (None, [])
        if dist.read_text("RECORD") is not None:
            located = (Path(str(f.locate())) for f in dist.files or [] if f.suffix == ".py")
            return None, sorted(p for p in located if p.is_file())
    return None, []


def _editable_url(dist: md.Distribution) -> str | None:
    """The ``file://`` project URL of an editable install, else ``None``."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        info = json.loads(dist.read_text("direct_url.json") or "null")
        url = info.get("url", "")
        if info.get("dir_info", {}).get("editable") and url.startswith("file://"):
            return url
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
