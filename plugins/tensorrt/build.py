"""Building a TensorRT engine: a plain description first, then the one function that needs TensorRT.

:func:`build_spec` turns the backend options and the profiles into a :class:`BuildSpec`, a
frozen, JSON-able description of the build (it goes into the report, and is tested without
TensorRT). :func:`build_engine` is the only code that talks to the builder: it parses the ONNX
into a *strongly typed* network (every tensor's type comes from the graph: TensorRT 10.1
deprecated and 11 removed the FP16/INT8 builder flags), adds the profiles, sets the workspace
limit and optimization level, reuses the timing cache file, and returns the serialized plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxopt.engine.errors import FxoptError
from fxopt.store.atomic import write_atomic

from .profiles import Profile, profiles_to_json

MIB = 2**20


class EngineBuildError(FxoptError):
    """TensorRT refused the network (a parser error names the node) or the build failed."""


@dataclass(frozen=True)
class BuildSpec:
    """Everything the builder is told, as plain data."""

    profiles: tuple[Profile, ...]
    workspace_bytes: int
    optimization_level: int
    timing_cache: Path | None
    strongly_typed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "strongly_typed": self.strongly_typed,
            "workspace_bytes": self.workspace_bytes,
            "builder_optimization_level": self.optimization_level,
            "timing_cache": str(self.timing_cache) if self.timing_cache else None,
            "profiles": profiles_to_json(self.profiles),
        }


def build_spec(options: Any, profiles: list[Profile]) -> BuildSpec:
    """The build that ``options`` (a :class:`TensorRTOptions`) and ``profiles`` ask for."""
    cache = Path(options.timing_cache).expanduser() if options.timing_cache else None
    return BuildSpec(
        profiles=tuple(profiles),
        workspace_bytes=options.workspace_mib * MIB,
        optimization_level=options.optimization_level,
        timing_cache=cache,
    )


def build_engine(trt: Any, onnx_path: Path, spec: BuildSpec, logger: Any = None) -> bytes:
    """Parse, configure and build; returns the serialized plan. ``trt`` is the module."""
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if spec.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(
            "TensorRT's ONNX parser rejected the model: " + "; ".join(_parser_errors(parser)),
            file=onnx_path,
            fix="`optimize check RECIPE` lists unsupported ops before a build",
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    config.builder_optimization_level = spec.optimization_level
    cache = config.create_timing_cache(_read_cache(spec.timing_cache))
    config.set_timing_cache(cache, ignore_mismatch=False)
    for profile in spec.profiles:
        optimization_profile = builder.create_optimization_profile()
        for name, shapes in profile.items():
            optimization_profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        config.add_optimization_profile(optimization_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            "TensorRT could not build the engine (its log above says why)",
            file=onnx_path,
            fix="a larger target.options.workspace_mib, or a lower optimization_level",
        )
    if spec.timing_cache is not None:
        write_atomic(spec.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _parser_errors(parser: Any) -> list[str]:
    """Each parser error with the node it is about (name and op), when TensorRT says."""
    messages = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node_name() if hasattr(error, "node_name") else ""
        op = error.node_operator() if hasattr(error, "node_operator") else ""
        where = f"node {node!r} ({op}): " if node or op else ""
        messages.append(where + error.desc())
    return messages


def _read_cache(path: Path | None) -> bytes:
    if path is not None and path.is_file():
        return path.read_bytes()
    return b""
