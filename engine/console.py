"""Console output: rich on stderr for people, nothing at all for ``-q`` and ``--json``.

stdout is reserved for machine output (``--json``), so everything here writes to stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.errors import LiveError
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Output:
    """Where the engine says what it is doing. ``quiet`` silences all but errors."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def step(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[bold cyan]•[/] {message}")

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[bold yellow]warning:[/] {escape(message)}")

    def error(self, message: str) -> None:
        # escaped: messages quote recipe tables ("add a [data.finetune] table") that rich
        # would otherwise swallow as markup
        self.console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A progress bar; yields ``advance(n, description=None)`` (a new description shows
        live figures, e.g. the fine-tune loss and learning rate)."""
        if not self.quiet and total > 1 and not self.console.is_terminal:
            self.step(f"{description} ({total} steps)")
        if self.quiet or total <= 1 or not self.console.is_terminal:
            yield lambda n=1, description=None: None
            return
        columns = (
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with self._live(columns, description, total) as advance:
            # inside a spinner: the spinner already says something is going on
            yield advance or (lambda n=1, description=None: None)

    @contextmanager
    def spinner(self, description: str) -> Iterator[None]:
        """A spinner with the time elapsed, for a stage with nothing to count (an export, an
        ONNX save, a graph optimization): no stage of a run is silent for long. In a log, or
        inside another live display (a progress bar), it prints one step line instead."""
        if self.quiet:
            yield
            return
        if not self.console.is_terminal:
            self.step(description)
            yield
            return
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with self._live(columns, description, None) as live:
            if live is None:
                self.step(description)
            yield

    @contextmanager
    def stage(self, description: str) -> Iterator[None]:
        """One stage of a run: a spinner while it works, then ``• description (N.N s)`` (in a
        log: the description up front, and its time when it took more than 5 s)."""
        started = time.perf_counter()
        with self.spinner(description):
            yield
        seconds = time.perf_counter() - started
        if self.console.is_terminal:
            self.step(f"{description} ({seconds:.1f} s)")
        elif seconds > 5:
            self.step(f"{description}: done in {seconds:.1f} s")

    @contextmanager
    def _live(
        self, columns: tuple, description: str, total: int | None
    ) -> Iterator[Callable[..., None] | None]:
        """A transient rich display with one task; yields its ``advance``, or ``None`` when
        another live display already runs (rich allows one at a time)."""
        progress = Progress(*columns, console=self.console, transient=True)
        try:
            progress.start()
        except LiveError:
            yield None
            return
        try:
            task_id = progress.add_task(description, total=total)
            yield lambda n=1, description=None: progress.update(
                task_id, advance=n, **({"description": description} if description else {})
            )
        finally:
            progress.stop()
