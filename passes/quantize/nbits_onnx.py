"""``fxopt::matmul_nbits`` -> ONNX Runtime's ``com.microsoft::MatMulNBits``.

The op's constants are already in MatMulNBits' layout (:mod:`.nbits`): the translation maps
inputs and attributes one to one. ``zero_points`` and ``bias`` are optional inputs of both
(the contrib op's fifth input, ``g_idx``, is deprecated and left empty). Registered with
:mod:`fxopt.plugins.onnx.translations` when this package is imported; onnxscript is imported
only when a graph is exported.
"""

from __future__ import annotations

from collections.abc import Callable

from fxopt.plugins.onnx.translations import register_translation

from .nbits import MATMUL_NBITS


def matmul_nbits_schema():
    """MatMulNBits' signature (inputs, attributes, types) as an ``onnx.defs.OpSchema``: the
    exporter builds a node from a schema, and the ``onnx`` package knows no contrib op. Taken
    from the schema the installed ONNX Runtime registers (``get_all_operator_schema``)."""
    from onnx.defs import OpSchema

    single, optional = (
        OpSchema.FormalParameterOption.Single,
        OpSchema.FormalParameterOption.Optional,
    )
    inputs = [
        ("A", "T1", single),
        ("B", "T2", single),
        ("scales", "T1", single),
        ("zero_points", "T3", optional),
        ("g_idx", "T4", optional),
        ("bias", "T1", optional),
    ]
    ints = OpSchema.AttrType.INT
    return OpSchema(
        "MatMulNBits",
        "com.microsoft",
        1,
        inputs=[OpSchema.FormalParameter(n, t, param_option=o) for n, t, o in inputs],
        outputs=[OpSchema.FormalParameter("Y", "T1")],
        type_constraints=[
            ("T1", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
            ("T2", ["tensor(uint8)"], ""),
            ("T3", ["tensor(uint8)", "tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
            ("T4", ["tensor(int32)"], ""),
        ],
        attributes=[
            *(OpSchema.Attribute(name, ints, required=True) for name in ("K", "N", "bits")),
            OpSchema.Attribute("block_size", ints, required=True),
            OpSchema.Attribute("accuracy_level", ints, required=False),
        ],
    )


def make_translation() -> Callable:
    import onnxscript

    contrib = onnxscript.values.Opset("com.microsoft", 1)
    matmul_nbits_op = onnxscript.values.Op(contrib, "MatMulNBits", matmul_nbits_schema())

    def matmul_nbits(
        x,
        packed_weight,
        scales,
        zero_points=None,
        bias=None,
        K: int = 0,
        N: int = 0,
        bits: int = 4,
        block_size: int = 32,
        accuracy_level: int = 0,
    ):
        return matmul_nbits_op(
            x,
            packed_weight,
            scales,
            zero_points,
            None,
            bias,
            K=K,
            N=N,
            bits=bits,
            block_size=block_size,
            accuracy_level=accuracy_level,
        )

    return matmul_nbits


def register() -> None:
    register_translation(MATMUL_NBITS, make_translation)
