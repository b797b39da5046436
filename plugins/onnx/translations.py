"""ONNX translations of custom torch ops, contributed by the plugins that define the ops.

A pass that writes its own op into the graph (``quantize.weight_only``'s
``fxopt::matmul_nbits``) says here how the ONNX exporter translates it; :func:`export_onnx
<fxopt.plugins.onnx.export.export_onnx>` hands every registered translation to
``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``. The engine never
learns about the op. The translation is an onnxscript function (see torch's
``custom_translation_table``); it is registered as a factory and built only when a graph is
exported, so registering costs nothing (onnxscript is not imported)::

    from fxopt.plugins.onnx.translations import register_translation

    def _make():
        import onnxscript

        contrib = onnxscript.values.Opset("com.microsoft", 1)

        def my_op(x, w):
            return contrib.MyOp(x, w)

        return my_op

    register_translation(torch.ops.mycorp.my_op.default, _make)

This module imports nothing heavy: a plugin may import it when it is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: torch op (an OpOverload) -> factory of its onnxscript translation
_FACTORIES: dict[Any, Callable[[], Callable]] = {}


def register_translation(op: Any, factory: Callable[[], Callable]) -> None:
    """Translate ``op`` (e.g. ``torch.ops.fxopt.matmul_nbits.default``) with the onnxscript
    function ``factory()`` returns. Registering the same op again replaces the factory."""
    _FACTORIES[op] = factory


def translation_table() -> dict[Any, Callable]:
    """Every registered translation, built: the exporter's ``custom_translation_table``."""
    return {op: factory() for op, factory in _FACTORIES.items()}
