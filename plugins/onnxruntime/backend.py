"""The ONNX Runtime backend: the embedded default, on any CPU.

Lowering exports ``model.onnx`` and lets ONNX Runtime optimize it offline into
``model.ort.onnx`` (fusions such as LayerNorm/GELU, and QDQ → int8 kernels for quantized
graphs), so load time is spent once, at build time. The optimized file is specific to this
ONNX Runtime version and, at level ``all``, to this CPU family; ``model.onnx`` is the portable
one.

A half-precision graph is the exception: at level ``all`` the CPU provider, which has no fp16
kernels for most ops, stores the fp16 weights as float32 in the optimized file, so the fp16
artifact would outweigh the fp32 one. Such a graph is saved at level ``extended`` (all the
fusions, the weights left half) when that is smaller, and the session finishes the
optimization in memory when it loads it (``optimized_offline_at`` in the report says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from fxopt.engine import hookimpl
from fxopt.engine.backend import Artifact, Backend, BackendOptions, Runner
from fxopt.engine.errors import BackendUnavailableError
from fxopt.engine.ir import ModelIR
from fxopt.plugins.onnx.export import export_onnx

from .qdq import (
    DISABLED_OPTIMIZERS,
    finish_optimized,
    float_op_warnings,
    rewrite_file,
)

LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
#: the file ONNX Runtime writes its optimized graph to, and a second optimization of it
OPTIMIZED = "model.ort.onnx"
NARROW = "model.ort.extended.onnx"
#: ONNX initializer types of half-precision weights
HALF_TYPES = (10, 16)  # onnx.TensorProto.FLOAT16, BFLOAT16
ORT_TYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
}


class OrtOptions(BackendOptions):
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    opset: int | None = None
    #: let ONNX Runtime fuse a residual Add and its LayerNorm into SkipLayerNormalization.
    #: Off by default: that CPU kernel ran 4-5x slower than LayerNormalization + Add on the
    #: x86 machines benchmarks/RESULTS.md was measured on (MiniLM b8: 12 ms of 67).
    skip_layernorm_fusion: bool = False


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Options = OrtOptions

    def check_available(self) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailableError(
                "onnxruntime is not installed", fix="pip install onnxruntime"
            ) from None
        missing = set(self.options.providers) - set(onnxruntime.get_available_providers())
        if missing:
            raise BackendUnavailableError(
                f"execution provider(s) {', '.join(sorted(missing))} not available here",
                field="target.options.providers",
                fix=f"use one of {', '.join(onnxruntime.get_available_providers())}",
            )

    def lower(self, ir: ModelIR, out_dir: Path) -> Artifact:
        import onnxruntime as ort

        files = export_onnx(ir, out_dir / "model.onnx", opset=self.options.opset)
        # a quantized graph: weights pre-transposed, uint8 activations (see .qdq)
        qdq = rewrite_file(out_dir / "model.onnx")
        files = [f for f in dict.fromkeys([*files, "model.onnx.data"]) if (out_dir / f).exists()]
        disabled = self._disabled(quantized=qdq is not None)
        self._optimize(out_dir, self.options.graph_optimization_level, OPTIMIZED, disabled)
        warnings = []
        if qdq is not None:
            qdq.update(finish_optimized(out_dir / OPTIMIZED))
            warnings = float_op_warnings(qdq["float_ops"], qdq["activations_to_uint8"] > 0)
        narrowed = None
        if qdq is None and self.options.graph_optimization_level == "all":
            narrowed = self._keep_half_weights(out_dir, disabled)
        return Artifact(
            backend=self.name,
            path=OPTIMIZED,
            files=[*files, OPTIMIZED],
            info={
                "onnx": "model.onnx",
                # what a deployment copies: the optimized graph and the weights it points at
                "deploy": _deployed(out_dir / OPTIMIZED),
                "onnxruntime": ort.__version__,
                "graph_optimization_level": self.options.graph_optimization_level,
                **({"optimized_offline_at": narrowed} if narrowed is not None else {}),
                **({"qdq_rewrite": qdq} if qdq is not None else {}),
                **({"warnings": warnings} if warnings else {}),
            },
        )

    def _optimize(self, out_dir: Path, level: str, name: str, disabled: list[str]) -> None:
        """Let ONNX Runtime optimize ``model.onnx`` at ``level`` and save it as ``name``."""
        import onnxruntime as ort

        options = self._session_options(level)
        options.optimized_model_filepath = str(out_dir / name)
        # this session only writes the optimized graph and never runs: prepacking would copy
        # every MatMul weight into kernel buffers for nothing (as much memory again as the
        # weights, a 1B model's 4.6 GiB), while unpacked they stay mapped from the data file.
        # The file written is the same byte for byte.
        options.add_session_config_entry("session.disable_prepacking", "1")
        ort.InferenceSession(
            str(out_dir / "model.onnx"),
            options,
            providers=self.options.providers,
            disabled_optimizers=disabled,
        )

    def _keep_half_weights(self, out_dir: Path, disabled: list[str]) -> str | None:
        """A half-precision graph optimized at level ``all`` for a provider without fp16
        kernels (the CPU's) has its weights stored as float32: the fp16 artifact would outweigh
        the fp32 one. Level ``extended`` (every fusion, no layout or precision change of the
        weights) keeps them half; when its files are the smaller, they are the artifact, and a
        session at ``all`` finishes the optimization in memory when it loads them.

        Returns why the artifact was saved at ``extended``, or ``None`` when it was not.
        """
        import onnx

        graph = onnx.load(str(out_dir / "model.onnx"), load_external_data=False).graph
        if not any(t.data_type in HALF_TYPES for t in graph.initializer):
            return None
        self._optimize(out_dir, "extended", NARROW, disabled)
        full, narrow = _deployed_bytes(out_dir / OPTIMIZED), _deployed_bytes(out_dir / NARROW)
        if narrow >= full:
            (out_dir / NARROW).unlink()
            return None
        (out_dir / NARROW).replace(out_dir / OPTIMIZED)
        return (
            f"extended: at level all ONNX Runtime stores the half-precision weights as float32 "
            f"for this provider ({full:,} bytes against {narrow:,}); a session at level all "
            "applies the rest of the optimization when it loads the model"
        )

    def load(self, out_dir: Path, artifact: Artifact) -> Runner:
        disabled = self._disabled(quantized="qdq_rewrite" in artifact.info)
        return OrtRunner(
            out_dir / artifact.path, self._session_options(), self.options.providers, disabled
        )

    def _disabled(self, quantized: bool) -> list[str]:
        """ONNX Runtime fusions to leave out, at lowering and again at load (which optimizes
        the saved graph once more and would otherwise redo them)."""
        disabled = [] if self.options.skip_layernorm_fusion else ["SkipLayerNormFusion"]
        return disabled + (list(DISABLED_OPTIMIZERS) if quantized else [])

    def _session_options(self, level: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        name = LEVELS[level or self.options.graph_optimization_level]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, name)
        options.intra_op_num_threads = self.options.intra_op_threads
        options.inter_op_num_threads = self.options.inter_op_threads
        options.log_severity_level = 3
        return options


class OrtRunner(Runner):
    def __init__(
        self, path: Path, options, providers: list[str], disabled: list[str] | None = None
    ) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(
            str(path), options, providers=providers, disabled_optimizers=disabled
        )
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self._types = {i.name: ORT_TYPES.get(i.type) for i in inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cast = {
            name: feeds[name].astype(self._types[name], copy=False)
            if self._types[name] is not None
            else feeds[name]
            for name in self.input_names
        }
        return self.session.run(None, cast)


@hookimpl
def fxopt_register_backends(registry) -> None:
    registry.register(OnnxRuntimeBackend.name, OnnxRuntimeBackend)


def _deployed_bytes(model: Path) -> int:
    return sum((model.parent / name).stat().st_size for name in _deployed(model))


def _deployed(model: Path) -> list[str]:
    """The optimized model and the external-data files it references."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    data = {
        entry.value
        for tensor in graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [model.name, *sorted(data)]
