"""The pass manager: runs the recipe's passes in order, under instruments.

After every pass it lints the graph and checks the pass kept the model's inputs, drops the
analyses the pass did not preserve, and records time, node counts, the pass's warnings and
(through the numerics instrument) the fidelity so far. A pass that changed nothing, unless
it says that is normal for it (``may_change_nothing``: the cleanups), is a warning: the user
asked for int8 or pruning and would otherwise ship the model unchanged without knowing.
A failure names the pass and the passes already run:
``pass 'quantize.int8' failed after [cleanup.dce]: ...``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from .errors import FxoptError
from .instruments import Instrument, PassRecord
from .ir import ModelIR
from .pass_base import Pass, PassContext, PassResult


class PassBug(RuntimeError):
    """A bug inside a pass (any exception that is not an :class:`FxoptError`), re-raised with
    the pass history and its traceback kept. A pass's user errors are
    :class:`~fxopt.engine.errors.PassError` and the other ``FxoptError`` kinds: one line,
    no traceback."""


class PassManager:
    def __init__(self, passes: Sequence[Pass], instruments: Sequence[Instrument] = ()) -> None:
        self.passes = list(passes)
        self.instruments = list(instruments)

    def run(
        self, ir: ModelIR, ctx: PassContext, done: Sequence[PassRecord] = ()
    ) -> tuple[ModelIR, list[PassRecord]]:
        """Run the passes; the first ``len(done)`` already ran (their result is ``ir``)."""
        for instrument in self.instruments:
            instrument.on_start(ir)
        records: list[PassRecord] = list(done)
        for index, pass_ in enumerate(self.passes):
            if index < len(done):
                continue
            record = PassRecord(pass_.name, nodes_before=len(ir.graph.nodes))
            ctx.output.step(f"pass {pass_.name}")
            start = time.perf_counter()
            # each pass gets its own context: its index, and the list its warnings go to
            pass_ctx = dataclasses.replace(ctx, index=index, warnings=record.warnings)
            try:
                result = pass_.run(ir, pass_ctx)
                _check(ir, result)
            except FxoptError as exc:
                exc.message = f"{self._where(pass_, records)}: {exc.message}"
                exc.args = (exc.render(),)
                raise
            except Exception as exc:
                raise PassBug(
                    f"{self._where(pass_, records)}: {type(exc).__name__}: {exc}"
                ) from exc
            record.seconds = time.perf_counter() - start
            record.modified = result.modified
            record.metrics = dict(result.metrics)
            ir = result.ir
            if result.modified:
                ir.invalidate(result.preserved)
            record.nodes_after = len(ir.graph.nodes)
            if not result.modified and not pass_.may_change_nothing:
                pass_ctx.warn(f"pass {pass_.name!r} changed nothing it was asked to change")
            for instrument in self.instruments:
                instrument.after_pass(index, pass_, result, record)
            records.append(record)
        return ir, records

    @staticmethod
    def _where(pass_: Pass, done: list[PassRecord]) -> str:
        history = ", ".join(r.name for r in done)
        return f"pass {pass_.name!r} failed after [{history}]"


def _check(before: ModelIR, result: PassResult) -> None:
    """Graph lint, and the model's signature must survive every pass."""
    if not isinstance(result, PassResult):
        raise TypeError(f"run() must return a PassResult, got {type(result).__name__}")
    ir = result.ir
    ir.graph.lint()
    ir.module.recompile()
    placeholders = [n.name for n in ir.graph.nodes if n.op == "placeholder"]
    if placeholders != before.placeholder_names and placeholders != ir.placeholder_names:
        raise RuntimeError(
            f"the pass changed the model inputs from {before.input_names} to {placeholders}"
        )
