"""The ONNX Runtime backend: the embedded default, on any CPU.

Lowering exports ``model.onnx`` and lets ONNX Runtime optimize it offline into
``model.ort.onnx`` (fusions such as LayerNorm/GELU, and QDQ → int8 kernels for quantized
graphs), so load time is spent once, at build time. The optimized file is specific to this
ONNX Runtime version and, at level ``all``, to this CPU family; ``model.onnx`` is the portable
one.
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
        options = self._session_options()
        options.optimized_model_filepath = str(out_dir / "model.ort.onnx")
        ort.InferenceSession(
            str(out_dir / "model.onnx"),
            options,
            providers=self.options.providers,
            disabled_optimizers=self._disabled(quantized=qdq is not None),
        )
        warnings = []
        if qdq is not None:
            qdq.update(finish_optimized(out_dir / "model.ort.onnx"))
            warnings = float_op_warnings(qdq["float_ops"])
        return Artifact(
            backend=self.name,
            path="model.ort.onnx",
            files=[*files, "model.ort.onnx"],
            info={
                "onnx": "model.onnx",
                # what a deployment copies: the optimized graph and the weights it points at
                "deploy": _deployed(out_dir / "model.ort.onnx"),
                "onnxruntime": ort.__version__,
                "graph_optimization_level": self.options.graph_optimization_level,
                **({"qdq_rewrite": qdq} if qdq is not None else {}),
                **({"warnings": warnings} if warnings else {}),
            },
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

    def _session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        level = LEVELS[self.options.graph_optimization_level]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
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
