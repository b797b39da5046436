"""The ``optimize`` command line: a click application over :mod:`fxopt.engine`."""

from .app import cli, main

__all__ = ["cli", "main"]
