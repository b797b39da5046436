"""Analyses: cached computations over the IR that passes share.

A pass that changes the graph declares which analyses it preserves in its
:class:`~fxopt.engine.PassResult`; the pass manager drops the others, as LLVM's
``PreservedAnalyses`` does. An analysis is computed lazily by :meth:`ModelIR.analysis`.

Example::

    >>> class NodeCount(Analysis):
    ...     name = "node-count"
    ...     def compute(self, ir):
    ...         return len(ir.graph.nodes)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .ir import ModelIR

#: a pass that changes nothing an analysis looks at can return this as ``preserved``
ALL = frozenset({"*"})


class Analysis:
    name: ClassVar[str]

    def compute(self, ir: ModelIR) -> Any:
        raise NotImplementedError


class ParameterCount(Analysis):
    """Number of parameter elements; preserved by passes that only rewire nodes."""

    name = "parameter-count"

    def compute(self, ir: ModelIR) -> int:
        return ir.parameter_count()
