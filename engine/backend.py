"""Backends: lower the IR to an artifact, and load an artifact as a :class:`Runner`.

Every backend's runner takes and returns numpy arrays by input name, so verification, the
report's latency figures and ``optimize bench`` treat ONNX Runtime, torch and TensorRT alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import ConfigDict

from .config import NumbersNotBooleans

if TYPE_CHECKING:
    from .ir import ModelIR


class BackendOptions(NumbersNotBooleans):
    """Base of a backend's ``[target.options]`` model; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Artifact:
    """What lowering wrote, as names relative to the output directory.

    ``info`` is the backend's own (versions, settings, statistics), kept in the report.
    ``info["warnings"]``, a list of strings, is what the user should hear about the lowering
    (an op left in float, a fusion that did not happen): the run prints each as a warning.
    """

    backend: str
    path: str
    files: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "path": self.path, "files": self.files, **self.info}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        data = dict(data)
        return cls(data.pop("backend"), data.pop("path"), data.pop("files", []), data)


class Runner:
    """Runs an artifact: named numpy inputs in, list of numpy outputs out."""

    input_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class Backend:
    name: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def check_available(self) -> None:
        """Raise :class:`BackendUnavailableError` (saying what to install) if it cannot run."""

    def lower(self, ir: ModelIR, out_dir: Path) -> Artifact:
        raise NotImplementedError

    def load(self, out_dir: Path, artifact: Artifact) -> Runner:
        raise NotImplementedError
