"""Errors a user can cause, and the exit codes they map to.

Everything a user can fix (a bad recipe, a missing file, an unavailable backend) raises a
subclass of :class:`FxoptError`. The CLI prints its message without a traceback and exits
with its ``exit_code``; anything else is an internal bug and keeps its traceback.

The message always says *where* (file, field), *what* and, when we know it, *how to fix it*,
because the person reading it is usually a build log away from the source.
"""

from __future__ import annotations

import errno
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_BACKEND_UNAVAILABLE = 4
#: the machine, not the input: a backend missing, the disk full
EXIT_ENVIRONMENT = EXIT_BACKEND_UNAVAILABLE
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class FxoptError(Exception):
    """A problem the user can fix; printed as ``where: message`` plus an optional fix."""

    exit_code = EXIT_USAGE

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class RecipeError(FxoptError):
    """The recipe cannot be parsed or validated."""


class ModelError(FxoptError):
    """The model directory or archive cannot be loaded."""


class DataError(FxoptError):
    """A dataset named by the recipe is missing, empty or malformed."""


class CaptureError(FxoptError):
    """``torch.export`` could not capture the model."""


class PluginError(FxoptError):
    """A plugin failed to load or registered something inconsistent."""


class OutputError(FxoptError):
    """The output location cannot be written as asked."""


class DiskSpaceError(OutputError):
    """The file system is (or would be) full: the environment, not the recipe."""

    exit_code = EXIT_ENVIRONMENT


class PassError(FxoptError):
    """A pass failed; the message carries the passes already run."""


class BackendUnavailableError(FxoptError):
    """The recipe's backend cannot run on this machine (library or device missing)."""

    exit_code = EXIT_BACKEND_UNAVAILABLE


class BudgetError(FxoptError):
    """The optimized model missed the recipe's fidelity budget."""

    exit_code = EXIT_BUDGET


#: what the file system said, and what to do about it
_OS_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space, or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or write elsewhere"),
    errno.EROFS: ("read-only file system", "choose a location you can write to"),
    errno.EACCES: ("permission denied", "choose a location you can write to, or fix its mode"),
    errno.EPERM: ("operation not permitted", "choose a location you can write to"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "check the path"),
    errno.EISDIR: ("is a directory, a file was expected", "check the path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n)"),
}


def environment_error(exc: BaseException) -> FxoptError | None:
    """The file-system error behind ``exc`` (itself, or what it was raised from) as a clean
    user-facing error; ``None`` when it is not one (then it is a bug, with its traceback)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _OS_ERRORS:
            message, fix = _OS_ERRORS[current.errno]
            where = current.filename
            kind = DiskSpaceError if current.errno in (errno.ENOSPC, errno.EDQUOT) else OutputError
            return kind(message, file=where, fix=fix)
        current = current.__cause__ or current.__context__
    return None
