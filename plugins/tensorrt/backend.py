"""The TensorRT backend: ONNX → strongly typed network → profiles → serialized ``model.plan``.

Precision is what the graph says (``cast.fp16`` / ``cast.bf16`` casts, ``quantize.int8`` Q/DQ):
the network is created ``STRONGLY_TYPED``, so no builder flag picks precisions behind the
graph's back (TensorRT 10.1 deprecated and 11 removed those flags and the int8 calibrators).
Before the build, the static checker of :mod:`.compat` names every node TensorRT's parser
would refuse. ``tensorrt`` is imported only when a build or a run needs it
(``pip install 'fxopt[tensorrt]'``); without it, or without a GPU, choosing this backend fails
at validation time with what to install.

Recipe::

    [target]
    backend = "tensorrt"
    [target.options]
    workspace_mib = 4096
    optimization_level = 3                 # builder optimization level, 0..5
    timing_cache = "~/.cache/fxopt/tensorrt/timing.cache"   # reused across builds
    # profiles = [{batch = {min = 1, opt = 1, max = 4}}, {batch = {min = 8, opt = 32, max = 64}}]
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import onnx
import torch
from pydantic import Field

from fxopt.engine import hookimpl
from fxopt.engine.backend import Artifact, Backend, BackendOptions, Runner
from fxopt.engine.config import DimRange
from fxopt.engine.errors import BackendUnavailableError
from fxopt.engine.ir import ModelIR
from fxopt.engine.specs import InputSpec
from fxopt.plugins.onnx.export import export_onnx

from .build import EngineBuildError, build_engine, build_spec
from .compat import check_model
from .profiles import Profile, compute_profiles, ir_dims, profiles_from_json

#: strong typing and ``execute_async_v3`` arrived in TensorRT 10
MIN_VERSION = (10, 0)
INSTALL = (
    "pip install 'fxopt[tensorrt]' (TensorRT 10+, on a machine with an NVIDIA GPU, its driver "
    "and a CUDA build of torch), or choose target.backend = 'onnxruntime' or 'torch'"
)


class TensorRTOptions(BackendOptions):
    workspace_mib: int = Field(default=4096, ge=1, description="builder workspace limit, MiB")
    optimization_level: int = Field(
        default=3, ge=0, le=5, description="builder optimization level (higher: slower build)"
    )
    timing_cache: str | None = Field(
        default="~/.cache/fxopt/tensorrt/timing.cache",
        description="timing cache file, read before and written after each build",
    )
    profiles: list[dict[str, DimRange]] = Field(
        default_factory=list,
        description="optimization profiles, each narrowing some [model.dims] axes; "
        "default: one profile spanning [model.dims]",
    )
    device: int = Field(default=0, ge=0, description="CUDA device index")
    opset: int | None = Field(default=None, description="ONNX opset (TensorRT 10 reads <= 20)")


class TensorRTBackend(Backend):
    name = "tensorrt"
    Options = TensorRTOptions

    def check_available(self) -> None:
        trt = import_tensorrt()
        version = tuple(int(p) for p in trt.__version__.split(".")[:2])
        if version < MIN_VERSION:
            raise BackendUnavailableError(
                f"TensorRT {trt.__version__} is installed; strongly typed networks and "
                "execute_async_v3 need TensorRT 10 or newer",
                field="target.backend",
                fix="pip install -U 'fxopt[tensorrt]'",
            )
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "TensorRT needs a CUDA GPU, and torch sees none on this machine",
                field="target.backend",
                fix="run on a machine with an NVIDIA GPU and a CUDA build of torch, or "
                "choose target.backend = 'onnxruntime'",
            )

    def profiles(self, ir: ModelIR) -> list[Profile]:
        """One optimization profile per ``profiles`` option entry, or one from the IR's dims."""
        return compute_profiles(ir.inputs, ir_dims(ir), self.options.profiles)

    def lower(self, ir: ModelIR, out_dir: Path) -> Artifact:
        onnx_files = export_onnx(ir, out_dir / "model.onnx", opset=self.options.opset)
        profiles = self.profiles(ir)
        model = onnx.load(str(out_dir / "model.onnx"))
        report = check_model(model, profiles, specs=ir.inputs)
        if not report.compatible:
            raise EngineBuildError(
                "TensorRT would refuse this model: "
                + "; ".join(str(p) for p in report.problems[:10]),
                file=ir.meta.source,
                fix="`optimize check RECIPE` shows every problem; keep the op out of the "
                "graph with a pass, or choose another backend",
            )
        spec = build_spec(self.options, profiles)
        trt = import_tensorrt()
        plan = build_engine(trt, out_dir / "model.onnx", spec)
        (out_dir / "model.plan").write_bytes(plan)
        return Artifact(
            backend=self.name,
            path="model.plan",
            files=[*onnx_files, "model.plan"],
            info={
                "onnx": "model.onnx",
                "tensorrt": trt.__version__,
                "build": spec.to_json(),
                "inputs": [_spec_json(s) for s in ir.inputs],
            },
        )

    def load(self, out_dir: Path, artifact: Artifact) -> Runner:
        from .runtime import TensorRTRunner

        specs = [
            InputSpec(s["name"], s["dtype"], tuple(s["shape"])) for s in artifact.info["inputs"]
        ]
        profiles = profiles_from_json(artifact.info["build"]["profiles"])
        return TensorRTRunner(out_dir / artifact.path, profiles, specs, device=self.options.device)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a :class:`BackendUnavailableError` saying what to install."""
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or a wheel whose libraries failed to load
        raise BackendUnavailableError(
            f"the tensorrt backend needs the TensorRT Python package, which cannot be imported "
            f"here ({type(exc).__name__}: {exc})",
            field="target.backend",
            fix=INSTALL,
        ) from None


def _spec_json(spec: InputSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)}


@hookimpl
def fxopt_register_backends(registry) -> None:
    registry.register(TensorRTBackend.name, TensorRTBackend)


@hookimpl
def fxopt_check(backend, recipe, model_dir, host, output, as_json):
    """``optimize check``: the static TensorRT pre-flight (see :mod:`.preflight`)."""
    if backend != TensorRTBackend.name:
        return None
    from .preflight import preflight

    return preflight(recipe, model_dir, output=output, as_json=as_json, host=host)
