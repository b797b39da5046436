"""The calibration cache: ``<cache_dir>/calibration/<key>/scales.json``.

The key hashes the graph (code and every parameter and buffer), the calibration inputs, the
pass's config and the library versions, so any change recalibrates. The entry holds what
rebuilding the quantized graph needs without touching data: each quantized op's activation
scale and zero point, the outlier channels (and their copies), and (accuracy-aware mode) the layers
kept in float with their measured cost. Rebuilding is then prepare + convert with fixed
scales: seconds instead of a calibration run. An entry whose file does not match its seal
(a flipped bit, a hand edit), an unreadable one, or one that names nodes the graph does not
have, is reported with a warning and rebuilt. ``--no-cache`` neither reads nor writes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule

from fxopt.engine.console import Output
from fxopt.store.entries import check_seal, discard, mark_used, new_entry
from fxopt.store.root import CacheRoot

from .op_kinds import Scales

FORMAT = 1
FILE = "scales.json"


@dataclass
class Calibration:
    """Everything a calibration decided, as stored in ``scales.json``."""

    scales: Scales
    layers: dict[str, str]
    outliers: dict[str, list[int]] = field(default_factory=dict)
    #: copies per outlier channel (``outlier_mode = "duplicate"``), parallel to ``outliers``
    outlier_copies: dict[str, list[int]] = field(default_factory=dict)
    float_layers: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "layers": self.layers,
            "scales": [
                {"node": node, "input": index, "scale": scale, "zero_point": zero_point}
                for (node, index), (scale, zero_point) in sorted(self.scales.items())
            ],
            "outliers": self.outliers,
            "outlier_copies": self.outlier_copies,
            "float_layers": self.float_layers,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        if data.get("format") != FORMAT:
            raise StaleEntry(f"format {data.get('format')!r}, this fxopt writes {FORMAT}")
        scales = {
            (str(s["node"]), int(s["input"])): (float(s["scale"]), int(s["zero_point"]))
            for s in data["scales"]
        }
        return cls(
            scales=scales,
            layers={str(k): str(v) for k, v in data["layers"].items()},
            outliers={str(k): [int(i) for i in v] for k, v in data["outliers"].items()},
            outlier_copies={str(k): [int(i) for i in v] for k, v in data["outlier_copies"].items()},
            float_layers=dict(data["float_layers"]),
            info=dict(data.get("info", {})),
        )

    def missing_nodes(self, gm: GraphModule) -> list[str]:
        """Node names the entry refers to that ``gm`` lacks (a stale entry)."""
        names = {n.name for n in gm.graph.nodes}
        wanted = {*self.layers, *self.outliers, *(node for node, _ in self.scales)}
        return sorted(wanted - names)


class StaleEntry(ValueError):
    """A readable entry that does not fit this graph or this version."""


def cache_key(
    gm: GraphModule, inputs: Sequence[Sequence[torch.Tensor]], settings: dict[str, Any]
) -> str:
    """sha256 of graph code, weights, calibration inputs, settings and versions."""
    import torchao

    digest = hashlib.sha256()
    digest.update(gm.code.encode("utf-8"))
    for name, tensor in sorted({**dict(gm.named_parameters()), **dict(gm.named_buffers())}.items()):
        digest.update(name.encode("utf-8"))
        _update(digest, tensor)
    for args in inputs:
        for tensor in args:
            _update(digest, tensor)
    meta = {"settings": settings, "torch": torch.__version__, "torchao": torchao.__version__}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))
    digest.update(str(FORMAT).encode())
    return digest.hexdigest()


def _update(digest: Any, tensor: torch.Tensor) -> None:
    data = tensor.detach().cpu().contiguous()
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())


@dataclass
class CalibrationCache:
    """``root``: ``<cache>/calibration``; ``None`` when the run has no cache (``--no-cache``)."""

    root: Path | None
    output: Output
    enabled: bool = True

    def __post_init__(self) -> None:
        self.enabled = self.enabled and self.root is not None

    def load(self, key: str) -> Calibration | None:
        """The entry for ``key``; ``None`` when absent, or (with a warning) unusable: one whose
        file no longer matches its seal is damaged and recalibrated, never reused."""
        if not self.enabled:
            return None
        entry = self.root / key
        path = entry / FILE
        if not entry.is_dir():
            return None
        if (problem := check_seal(entry)) is not None:
            self.discard(key, f"damaged calibration cache {entry} ({problem}); recalibrating")
            return None
        try:
            calibration = Calibration.from_json(json.loads(path.read_text(encoding="utf-8")))
        except StaleEntry as exc:
            self.discard(key, f"stale calibration cache {path} ({exc}); recalibrating")
            return None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            self.discard(key, f"corrupt calibration cache {path} ({why}); recalibrating")
            return None
        mark_used(entry)
        return calibration

    def discard(self, key: str, message: str) -> None:
        self.output.warn(message)
        if self.root is not None:
            discard(self.root / key)

    def store(self, key: str, calibration: Calibration) -> Path | None:
        """Write the entry atomically (sealed, then renamed into place)."""
        if not self.enabled:
            return None
        entry = self.root / key
        discard(entry)
        try:
            with new_entry(entry) as tmp:
                text = json.dumps(calibration.to_json(), indent=1, sort_keys=True)
                (tmp / FILE).write_text(text + "\n", encoding="utf-8")
            CacheRoot(self.root.parent).evict(keep=entry, output=self.output)
        except OSError as exc:
            self.output.warn(f"could not write the calibration cache {entry}: {exc}")
            return None
        return entry / FILE
