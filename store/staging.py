"""Atomic output directories: built in a hidden sibling, renamed into place at the end.

An interrupted or failed run (Ctrl-C and SIGTERM included) removes its staging directory, so
nothing that looks finished is ever left behind; one killed outright (SIGKILL, power loss)
leaves a staging directory whose name carries its host and process id, and the next run into
the same parent removes it once that process is gone. The commit holds a lock on the parent
directory, checks that the target is still what :func:`~.output_guard.check_replaceable` saw
at the start, and never lets a rename replace a directory that appeared meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fxopt.engine.errors import OutputError
from fxopt.engine.interrupts import raise_if_pending

from .output_guard import Seen, foreign_content, observe

#: ``.<name>.fxopt.<host>.<pid>.<random>``: a staging (or set-aside) directory of one run
_TAG = "fxopt"


class StagedDir:
    """``with StagedDir(out, seen) as tmp: ...; staged.commit()``.

    ``seen`` is what the target was when the run was planned; ``commit`` replaces nothing
    else. Entering creates the staging directory, which is also the check that the output's
    parent is writable, so it is done before the run's expensive work.
    """

    def __init__(self, target: Path, seen: Seen) -> None:
        self.target = target
        self.seen = seen
        self.path: Path | None = None

    def __enter__(self) -> Path:
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(parent, self.target.name)
            self.path = Path(tempfile.mkdtemp(prefix=_prefix(self.target.name), dir=parent))
        except OSError as exc:
            raise OutputError(
                f"cannot create the output directory here: {exc.strerror or exc}",
                file=self.target,
                field="-o",
                fix="choose an -o in a directory you can write to",
            ) from exc
        return self.path

    def commit(self) -> None:
        """Move the finished directory into place (replacing only what was seen at start);
        not when an interrupt arrived and something on the way swallowed it."""
        assert self.path is not None
        raise_if_pending()
        normalize_modes(self.path)
        with parent_lock(self.target.parent):
            now = observe(self.target)
            if now != self.seen:
                raise OutputError(
                    "the output directory changed while this run was going (created, replaced "
                    "or edited by someone else); nothing was replaced and this run's result "
                    "was discarded",
                    file=self.target,
                    fix="choose an -o no other process writes to, and run again",
                )
            old = None
            if now.exists:
                if (problem := foreign_content(self.target)) is not None:
                    raise OutputError(
                        f"the output directory {problem} now; nothing was replaced",
                        file=self.target,
                        fix="choose another -o",
                    )
                old = self.target.with_name(f"{_prefix(self.target.name)}old")
                os.rename(self.target, old)
            try:
                rename_noreplace(self.path, self.target)
            except OSError:
                if old is not None:
                    os.rename(old, self.target)
                raise
            self.path = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc_info) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def normalize_modes(root: Path) -> None:
    """Give every file and folder of an output the modes the user's umask asks for: some
    writers (ONNX's external data, ``mkdtemp``) create them private, and an artifact is made
    to be deployed and shared."""
    mask = current_umask()
    root.chmod(0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sweep_stale(parent: Path, name: str) -> list[Path]:
    """Remove the staging directories of ``name`` left by dead processes of this host."""
    removed = []
    host = _host_tag()
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            parts = entry.name.removeprefix(f".{name}.").split(".")
            if not entry.name.startswith(f".{name}.{_TAG}.") or len(parts) < 4:
                continue
            if parts[1] != host or not parts[2].isdigit() or pid_alive(int(parts[2])):
                continue
            if not entry.is_dir() or entry.is_symlink():
                continue
            target = parent / name
            if parts[3] == "old" and not os.path.lexists(target):
                os.rename(entry, target)  # killed mid-swap: the earlier output goes back
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def parent_lock(parent: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the directory itself: nothing is written to take it."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def rename_noreplace(source: Path, dest: Path) -> None:
    """``rename(2)`` that fails when ``dest`` exists (a plain rename would silently replace
    an empty directory created meanwhile): Linux's ``renameat2(RENAME_NOREPLACE)``."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(dest), noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), str(dest))
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest))
    os.rename(source, dest)


def _prefix(name: str) -> str:
    return f".{name}.{_TAG}.{_host_tag()}.{os.getpid()}."


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a staging or cache directory it
    left behind is still in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
