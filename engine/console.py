"""Console output: rich on stderr for people, nothing at all for ``-q`` and ``--json``.

stdout is reserved for machine output (``--json``), so everything here writes to stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


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
        if self.quiet or total <= 1:
            yield lambda n=1, description=None: None
            return
        columns = (
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as bar:
            task_id = bar.add_task(description, total=total)
            yield lambda n=1, description=None: bar.update(
                task_id, advance=n, **({"description": description} if description else {})
            )
