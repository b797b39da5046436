"""The exported ONNX model does not depend on where fxopt, torch or the model's code are
installed: the exporter's per-node Python stack traces (absolute paths of the building
machine) are left out, so one build gives one file anywhere."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from fxopt.engine.config import DimRange
from fxopt.engine.loading import LoadedModel
from fxopt.engine.specs import InputSpec
from fxopt.plugins.onnx.export import STACK_TRACE, export_onnx
from fxopt.run.capture import capture


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_the_onnx_model_holds_no_stack_trace_and_no_source_path(tmp_path):
    specs = [InputSpec("x", "float32", ("batch", 8), -1.0, 1.0)]
    dims = {"batch": DimRange(min=1, opt=2, max=8)}
    loaded = LoadedModel(
        module=Mlp().eval(), task="generic", inputs=specs, dims=dims, output_names=["y"], files=[]
    )
    ir = capture(loaded, specs, dims, source="test")
    export_onnx(ir, tmp_path / "model.onnx")
    model = onnx.load(str(tmp_path / "model.onnx"))
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert STACK_TRACE not in keys
    assert "pkg.torch.onnx.name_scopes" in keys  # the rest of the metadata stays
    data = (tmp_path / "model.onnx").read_bytes()
    for installed in (Path(torch.__file__).parent, Path(__file__).parent):
        assert str(installed).encode() not in data
