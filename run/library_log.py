"""Libraries' warnings go to a log file in the output, not to the user's console.

torch, torchao, onnxscript and transformers warn on every run about things the user cannot act
on (deprecated enum registrations, optional kernels that did not load, FutureWarnings). While
a command runs, Python warnings and library log records are collected here instead of being
printed; the run writes them to ``fxopt.log`` in its output and says how many there were.
fxopt's own messages go through :class:`~fxopt.engine.console.Output` and are not affected.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

LOG_FILE = "fxopt.log"
#: libraries whose loggers carry handlers of their own, which would print past ours
LIBRARIES = ("torch", "torchao", "onnx", "onnxscript", "onnxruntime", "transformers")


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


_active: _Collector | None = None


@contextlib.contextmanager
def collected() -> Iterator[None]:
    """Collect library warnings for the duration of one command (nesting is a no-op)."""
    global _active
    if _active is not None:
        yield
        return
    collector = _Collector()
    root = logging.getLogger()
    root.addHandler(collector)
    logging.captureWarnings(True)
    _active = collector
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            reroute()
            yield
    finally:
        _active = None
        logging.captureWarnings(False)
        root.removeHandler(collector)


def reroute() -> None:
    """Send the libraries' own handlers' records to the collector (call again after a
    library configured its logging on import: torch does)."""
    if _active is None:
        return
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                logger.removeHandler(handler)
        logger.propagate = True


def write(directory: Path) -> int:
    """Write what was collected to ``directory/fxopt.log``; the number of lines written."""
    if _active is None or not _active.lines:
        return 0
    lines = list(dict.fromkeys(_active.lines))  # a warning repeated per layer, once
    (directory / LOG_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)
