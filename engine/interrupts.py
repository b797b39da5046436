"""Ctrl-C and SIGTERM, remembered: a stop the user asked for is never lost.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens to
be. Where that is code that catches it (a library's ``except BaseException``, a ``__del__``,
whose exceptions the interpreter prints and drops, a C extension that checks for signals and
clears the error), the interrupt vanishes and the run goes on to write its output as if
nobody had asked it to stop. :func:`handling` installs handlers that also remember the
signal, and the places that publish something (the output directory, a cache entry) call
:func:`raise_if_pending` first: an interrupt swallowed on the way still stops the run there,
before anything is written.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that every ``with`` and ``finally`` on the
    way out runs: staging directories and unfinished cache entries are removed."""


#: the signal received while :func:`handling` was active, until it ends
_pending: int | None = None


def _interrupt(signum: int, frame) -> None:
    global _pending
    _pending = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGINT and SIGTERM raise (``KeyboardInterrupt``, :class:`Terminated`) and are
    remembered for :func:`raise_if_pending`; the previous handlers come back after. Only the
    main thread can install handlers: elsewhere this does nothing."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending = None
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _pending = None


def raise_if_pending() -> None:
    """Raise the interrupt again if one arrived and was swallowed before this point."""
    if _pending is not None:
        raise Terminated() if _pending == signal.SIGTERM else KeyboardInterrupt()
