"""The cache directory as a whole: where it is, that it is fxopt's, and how large it may grow.

A directory becomes an fxopt cache when fxopt writes its marker, ``fxopt-cache.json``; it
also holds the size limit (``optimize cache limit``). ``cache clear`` and eviction touch only
a directory with that marker (or one holding nothing but what fxopt puts in a cache), so
``--cache-dir`` pointed at the wrong folder deletes nothing. Entries (finished outputs, pass
results, calibrations) are evicted least-recently-used first whenever the cache grows past its
limit (4 GiB unless set; ``FXOPT_CACHE_LIMIT`` overrides).

Resolving the location needs no home directory when ``--cache-dir`` or ``FXOPT_CACHE_DIR``
is given. Kept free of torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

from fxopt.engine.console import Output
from fxopt.engine.errors import OutputError

from .atomic import write_atomic
from .entries import SEAL, discard, read_json_object, sweep_temporaries

MARKER = "fxopt-cache.json"
#: sub-directories of sealed, evictable entries
KINDS = ("outputs", "passes", "calibration")
#: everything fxopt itself puts in a cache directory
KNOWN = frozenset({*KINDS, "locks", "finetune", "file-hashes.json", MARKER})
DEFAULT_LIMIT = 4 << 30
LIMIT_ENV = "FXOPT_CACHE_LIMIT"
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}  # fmt: skip


@dataclass(frozen=True)
class Location:
    """Where the cache is, and whether the user named it (flag or environment)."""

    path: Path | None
    explicit: bool
    #: why there is no path (no home directory to put the default under)
    reason: str = ""


def locate(flag: Path | None = None) -> Location:
    """``--cache-dir``, else ``$FXOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fxopt``, else
    ``~/.cache/fxopt``; the home directory is looked up only for the last."""
    if flag is not None:
        return Location(flag, explicit=True)
    if os.environ.get("FXOPT_CACHE_DIR"):
        return Location(Path(os.environ["FXOPT_CACHE_DIR"]), explicit=True)
    if os.environ.get("XDG_CACHE_HOME"):
        return Location(Path(os.environ["XDG_CACHE_HOME"]) / "fxopt", explicit=False)
    try:
        home = Path.home()
    except (RuntimeError, KeyError, OSError):
        return Location(None, False, "no home directory to keep the cache in")
    return Location(home / ".cache" / "fxopt", explicit=False)


def parse_size(text: str) -> int:
    """``"4GiB"``, ``"500 MB"``, ``"1e9"`` → bytes; raises ``ValueError``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (write e.g. 4GiB, 500MB or 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class CacheRoot:
    """One cache directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.marker = path / MARKER

    def foreign(self) -> str | None:
        """Why this directory is not (and may not become) an fxopt cache; ``None`` if it is."""
        if self.path.is_symlink() and not self.path.is_dir():
            return "is a broken symbolic link"
        if not self.path.exists():
            return None
        if not self.path.is_dir():
            return "is a file, not a directory"
        if self.marker.is_file():
            return None
        other = sorted(p.name for p in self.path.iterdir() if p.name not in KNOWN)
        if other:
            return f"is not an fxopt cache (it holds {', '.join(other[:4])})"
        return None

    def ensure(self) -> None:
        """Create the directory and its marker; raises ``OSError`` where that fails."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.marker.is_file():
            self._write_marker({"fxopt_cache": 1})
        for kind in KINDS:
            sweep_temporaries(self.path / kind)

    def settings(self) -> dict[str, Any]:
        return read_json_object(self.marker) or {}

    def limit(self) -> int:
        """The size limit in bytes: ``$FXOPT_CACHE_LIMIT``, else the marker's, else 4 GiB."""
        if os.environ.get(LIMIT_ENV):
            try:
                return parse_size(os.environ[LIMIT_ENV])
            except ValueError as exc:
                raise OutputError(str(exc), field=LIMIT_ENV, fix="unset it or fix it") from exc
        value = self.settings().get("limit_bytes")
        return value if isinstance(value, int) and not isinstance(value, bool) else DEFAULT_LIMIT

    def set_limit(self, limit: int) -> None:
        self.ensure()
        self._write_marker({**self.settings(), "fxopt_cache": 1, "limit_bytes": limit})

    def entries(self) -> list[tuple[float, int, Path]]:
        """``(last used, bytes, path)`` of every sealed entry, least recently used first."""
        found = []
        for kind in KINDS:
            with contextlib.suppress(OSError):
                for entry in (self.path / kind).iterdir():
                    if entry.name.startswith(".") or not entry.is_dir():
                        continue
                    used = _mtime(entry / SEAL) or _mtime(entry)
                    found.append((used, _size(entry), entry))
        return sorted(found, key=lambda item: item[0])

    def usage(self) -> dict[str, Any]:
        counts = {kind: 0 for kind in KINDS}
        for _, _, entry in self.entries():
            counts[entry.parent.name] += 1
        return {
            "path": str(self.path),
            "bytes": _size(self.path) if self.path.is_dir() else 0,
            "limit_bytes": self.limit(),
            **counts,
        }

    def evict(self, keep: Path | None = None, output: Output | None = None) -> tuple[int, int]:
        """Remove least-recently-used entries until the cache fits its limit; never ``keep``.
        Says so on ``output`` when it removed any; returns (entries removed, bytes freed)."""
        limit = self.limit()
        entries = self.entries()
        # one walk: the entries' sizes, plus what lies outside them (hashes, locks, temporaries)
        outside = _size(self.path, skip={entry for *_, entry in entries})
        total = outside + sum(size for _, size, _ in entries)
        removed = freed = 0
        for _, size, entry in entries:
            if total <= limit:
                break
            if keep is not None and entry == keep:
                continue
            discard(entry)
            total, removed, freed = total - size, removed + 1, freed + size
        if removed and output is not None:
            output.step(
                f"cache: removed {removed} least recently used entr{'y' if removed == 1 else 'ies'}"
                f" ({freed / 2**20:.0f} MiB) to stay under its limit"
            )
        return removed, freed

    def clear(self) -> int:
        """Remove every entry, lock and remembered hash; the marker and settings stay."""
        if (why := self.foreign()) is not None:
            raise OutputError(
                f"refusing to clear: this directory {why}",
                file=self.path,
                field="--cache-dir",
                fix="point --cache-dir (or FXOPT_CACHE_DIR) at an fxopt cache",
            )
        removed = 0
        for name in sorted(KNOWN - {MARKER}):
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                removed += sum(1 for _ in path.iterdir())
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        return removed

    def _write_marker(self, data: dict[str, Any]) -> None:
        write_atomic(self.marker, json.dumps(data, indent=1) + "\n")


def _size(path: Path, skip: set[Path] | frozenset[Path] = frozenset()) -> int:
    """Bytes of the files under ``path``, not descending into ``skip`` or symlinks."""
    total = 0
    with contextlib.suppress(OSError):
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if Path(root, d) not in skip]
            for name in files:
                with contextlib.suppress(OSError):
                    stat = os.lstat(os.path.join(root, name))
                    if S_ISREG(stat.st_mode):  # not a symlink: its target is not ours
                        total += stat.st_size
    return total


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
