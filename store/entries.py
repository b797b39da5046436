"""Sealed cache entries: every entry of every fxopt cache is verified by content hash on read.

A cache entry (a finished output, a pass result, a calibration) is a directory written under a
temporary name, sealed with ``seal.json`` (the sha256 of each of its files) and renamed into
place. A reader calls :func:`check_seal` first: a flipped bit, a truncated file or a hand-edited
JSON makes the entry *damaged*, and a damaged entry is removed with a warning and rebuilt,
never reused. A read marks the entry used (the seal's mtime), which is what least-recently-used
eviction orders by (:mod:`.root`).

Kept free of torch: the build cache's no-op path uses it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fxopt.engine.interrupts import raise_if_pending

from .output_guard import relative_files
from .staging import pid_alive

SEAL = "seal.json"
SEAL_FORMAT = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file's object; ``None`` when it is missing, unreadable or not an object (fxopt's
    state files are objects, and valid JSON of another shape is as good as damaged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def seal(directory: Path) -> None:
    """Record the sha256 of every file of ``directory`` in its ``seal.json``."""
    files = {name: file_sha256(directory / name) for name in relative_files(directory)}
    files.pop(SEAL, None)
    text = json.dumps({"format": SEAL_FORMAT, "files": files}, indent=1, sort_keys=True)
    (directory / SEAL).write_text(text + "\n", encoding="utf-8")


def check_seal(directory: Path) -> str | None:
    """Why ``directory`` cannot be trusted, or ``None`` when every file matches its seal."""
    try:
        record = json.loads((directory / SEAL).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no seal (written by an older fxopt, or not finished)"
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        return f"its seal is unreadable ({type(exc).__name__})"
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return "its seal is not an fxopt seal"
    present = set(relative_files(directory)) - {SEAL}
    if missing := sorted(set(record["files"]) - present):
        return f"{missing[0]} is missing"
    if extra := sorted(present - set(record["files"])):
        return f"{extra[0]} was added after it was sealed"
    for name, digest in record["files"].items():
        try:
            if file_sha256(directory / name) != digest:
                return f"{name} does not match its recorded sha256"
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror})"
    return None


def mark_used(directory: Path) -> None:
    """Note that the entry was just read (least-recently-used eviction spares it longest)."""
    with contextlib.suppress(OSError):
        os.utime(directory / SEAL)


def discard(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def new_entry(entry: Path) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it is sealed and renamed to ``entry``.

    Whatever happens inside (an error, Ctrl-C, SIGTERM), the temporary directory is removed;
    an entry another process published first is kept and this one dropped.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        raise_if_pending()  # what an interrupted computation left is no entry
        seal(tmp)
        with contextlib.suppress(FileExistsError, OSError):
            if not entry.exists():
                os.rename(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_temporaries(directory: Path) -> None:
    """Remove unfinished entries (``.<key>.<pid>.tmp``) of processes that are gone."""
    with contextlib.suppress(OSError):
        for tmp in directory.glob(".*.tmp"):
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)
