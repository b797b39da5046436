"""Atomic output directories: build in a sibling temp dir, rename into place at the end.

An interrupted or failed run (Ctrl-C included) removes its temp dir, so nothing that looks
finished is ever left behind; with ``force`` the old output is swapped out only once the new
one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError


class StagedDir:
    """``with StagedDir(out, force) as tmp: ...; staged.commit()``."""

    def __init__(self, target: Path, *, force: bool) -> None:
        self.target = target
        self.force = force
        self.path: Path | None = None
        check_target(target, force=force)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.path

    def commit(self) -> None:
        """Move the finished directory into place (replacing the old one when forced)."""
        assert self.path is not None
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            self.target.rename(old)
        self.path.rename(self.target)
        self.path = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc_info) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def check_target(target: Path, *, force: bool) -> None:
    if target.exists() and not force:
        raise OutputError(
            "output directory already exists",
            file=target,
            fix="pass --force to replace it, or choose another -o",
        )
    if target.exists() and not target.is_dir():
        raise OutputError("output path exists and is not a directory", file=target)
