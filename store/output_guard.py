"""Where a run may write, and what it may replace: the rules that keep a user's files safe.

A build tool that deletes the model it was given is worse than none, so every rule here is
checked before any work starts, from the paths alone:

- ``-o`` may not *be* or *contain* the model, the recipe's folder, a data file or the cache,
  and may not *sit inside* the model directory or the cache (both are read or managed as a
  whole). An output next to the recipe (``optimize recipe.toml -o out``) is the normal case.
- An existing ``-o`` is replaced only with ``--force``, and only when it is a directory an
  earlier fxopt run wrote: its ``manifest.json`` says so and lists every file in it. Anything
  else is refused, naming what would have been deleted.
- What the target was at the start is remembered (:class:`Seen`); the commit re-checks it
  under a lock and refuses to replace anything that changed meanwhile.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fxopt.engine.errors import DiskSpaceError, OutputError

MANIFEST = "manifest.json"
#: ``manifest["generator"]`` of every output this fxopt writes
GENERATOR = "fxopt"
#: the files a rejected run's ``<out>.rejected`` directory holds
REJECTED_FILES = frozenset({"report.json", "report.md", "fxopt.log"})
#: room an output needs beyond its model: reports, manifest, file-system slack
SLACK_BYTES = 16 << 20


@dataclass(frozen=True)
class Protected:
    """A path ``-o`` must keep clear of. ``whole``: ``-o`` may not sit inside it either."""

    label: str
    path: Path
    whole: bool = False


@dataclass(frozen=True)
class Seen:
    """What was at the target: nothing, or a directory (its inode, its manifest's digest)."""

    exists: bool
    inode: int | None = None
    manifest_digest: str | None = None


def check_placement(
    target: Path, protected: Iterable[Protected], *, flag: str = "-o", what: str = "output"
) -> None:
    """Refuse a path fxopt would write (``-o``, ``--depfile``, ``--dump-ir``) that is,
    contains or (for whole trees) sits inside a protected path."""
    resolved = _resolved(target)
    if resolved == Path(resolved.anchor):
        raise OutputError(
            f"the {what} cannot be a file-system root", file=target, fix=f"choose another {flag}"
        )
    for item in protected:
        path = _resolved(item.path)
        if resolved == path:
            why = f"is the {item.label}"
        elif path.is_relative_to(resolved):
            why = f"contains the {item.label} ({item.path})"
        elif item.whole and resolved.is_relative_to(path):
            why = f"sits inside the {item.label} ({item.path})"
        else:
            continue
        raise OutputError(
            f"the {what} {why}; fxopt never writes over its own inputs",
            file=target,
            field=flag,
            fix=f"choose a {flag} outside the model, the recipe's folder, the data and the cache",
        )


def check_depfile(path: Path) -> None:
    """An existing ``--depfile`` is replaced only when it is a depfile fxopt wrote."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        first = ""
    if (
        path.is_symlink()
        or not path.is_file()
        or not first.rstrip(" \\").endswith("manifest.json:")
    ):
        raise OutputError(
            "the depfile path holds something that is not a depfile fxopt wrote",
            file=path,
            field="--depfile",
            fix="choose another --depfile, or remove that file yourself",
        )


def check_parent(target: Path, needed_bytes: int) -> None:
    """The output's parent can be a directory, and its file system has room for the output."""
    ancestor = _resolved(target).parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(
            f"cannot create the output: {ancestor} is a file, not a directory",
            file=target,
            field="-o",
            fix="choose an -o whose parent is a directory",
        )
    free = shutil.disk_usage(ancestor).free
    if free < needed_bytes:
        raise DiskSpaceError(
            f"not enough free space for the output: {free / 2**20:.0f} MiB free on the file "
            f"system of {ancestor}, about {needed_bytes / 2**20:.0f} MiB needed",
            file=target,
            fix="free some space or choose an -o on another file system",
        )


def needed_bytes(model_files: Iterable[Path]) -> int:
    """Room an output needs: the exported graph and the backend's copy of the weights."""
    return 2 * sum(p.stat().st_size for p in model_files if p.is_file()) + SLACK_BYTES


def check_replaceable(target: Path, *, force: bool) -> Seen:
    """What is at ``target``, refused unless it may be replaced (``--force``, fxopt's own)."""
    if target.is_symlink():
        raise OutputError(
            "the output path is a symbolic link; fxopt replaces only directories it wrote",
            file=target,
            fix="choose another -o",
        )
    if not target.exists():
        return Seen(exists=False)
    if not target.is_dir():
        raise OutputError(
            "output path exists and is not a directory",
            file=target,
            fix="choose another -o; fxopt never replaces a file it did not write",
        )
    if not force:
        raise OutputError(
            "output directory already exists",
            file=target,
            fix="pass --force to replace it (only an earlier fxopt output is replaced), "
            "or choose another -o",
        )
    problem = foreign_content(target)
    if problem is not None:
        raise OutputError(
            f"--force replaces only a directory an earlier fxopt run wrote, and this one "
            f"{problem}; it would have deleted {_listing(target)}",
            file=target,
            fix="choose another -o, or move those files away yourself",
        )
    return observe(target)


def observe(target: Path) -> Seen:
    """The target as it is now (what :class:`Seen` compares at commit)."""
    if not target.exists() and not target.is_symlink():
        return Seen(exists=False)
    stat = target.lstat()
    manifest = target / MANIFEST
    digest = None
    if target.is_dir() and manifest.is_file():
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    return Seen(exists=True, inode=stat.st_ino, manifest_digest=digest)


def foreign_content(directory: Path) -> str | None:
    """Why ``directory`` is not an output fxopt wrote (``None`` when it is)."""
    manifest_file = directory / MANIFEST
    if not manifest_file.is_file():
        return f"has no {MANIFEST}"
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return f"has a {MANIFEST} that is not fxopt's (not valid JSON)"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        return f"has a {MANIFEST} that is not fxopt's (no outputs listed)"
    if manifest.get("generator") != GENERATOR and "build_key" not in manifest:
        return f"has a {MANIFEST} that fxopt did not write"
    extra = sorted(set(relative_files(directory)) - {MANIFEST, *manifest["outputs"]})
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return f"holds files its manifest does not list ({shown})"
    return None


def foreign_rejected(directory: Path) -> str | None:
    """Why ``<out>.rejected`` is not a rejected-run report fxopt wrote (``None`` when it is)."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        return "is not a directory"
    if not directory.exists():
        return None
    extra = sorted(set(relative_files(directory)) - REJECTED_FILES)
    return f"holds files fxopt did not write ({', '.join(extra[:5])})" if extra else None


def relative_files(directory: Path) -> list[str]:
    """Every file (and symbolic link) under ``directory``: sorted POSIX paths relative to it,
    the names a manifest, a seal and these checks all speak in."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() or p.is_symlink()
    )


def _listing(directory: Path, limit: int = 10_000) -> str:
    """What deleting ``directory`` would lose, counted up to ``limit`` files (a home directory
    named by mistake must not take minutes to describe)."""
    names = sorted(p.name for p in directory.iterdir())
    count = 0
    for _ in itertools.islice(
        (p for p in directory.rglob("*") if p.is_file() or p.is_symlink()), limit
    ):
        count += 1
    shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
    if not names:
        return "an empty directory"
    return f"{'more than ' if count >= limit else ''}{count:,} file(s): {shown}"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))
