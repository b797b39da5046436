"""Pass-manager instruments: observe each pass without the passes knowing.

Built in: wall time (always), IR dumps (``--dump-ir DIR``) and per-pass numerics (each pass's
output against the reference model on the verification inputs, so the report shows which
pass cost what). Plugins add more through ``fxopt_add_instruments``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ir import ModelIR
    from .pass_base import Pass, PassResult


@dataclass
class PassRecord:
    """What the report says about one pass run."""

    name: str
    seconds: float = 0.0
    modified: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    numerics: dict[str, float] = field(default_factory=dict)
    nodes_before: int = 0
    nodes_after: int = 0
    #: what the pass warned of (:meth:`~.pass_base.PassContext.warn`), shown and reported
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "seconds": round(self.seconds, 4)}


class Instrument:
    """Hooks around every pass; override what you need."""

    def on_start(self, ir: ModelIR) -> None:
        """Before the first pass, with the captured IR."""

    def after_pass(self, index: int, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        """After each pass, with its result and the record the report will show."""


class DumpIR(Instrument):
    """Write the graph's readable code before the first pass and after each pass."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_start(self, ir: ModelIR) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write("00-captured", ir)

    def after_pass(self, index: int, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        self._write(f"{index + 1:02d}-{pass_.name}", result.ir)

    def _write(self, stem: str, ir: ModelIR) -> None:
        text = ir.module.print_readable(print_output=False)
        (self.directory / f"{stem}.py").write_text(text, encoding="utf-8")


class Numerics(Instrument):
    """Measure each pass's output against the reference model."""

    def __init__(self, evaluate: Callable[[ModelIR], dict[str, float]]) -> None:
        self.evaluate = evaluate

    def after_pass(self, index: int, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        record.numerics = self.evaluate(result.ir)
