"""The torch backend: the IR itself, saved as a ``.pt2`` archive, run eagerly or compiled.

With ``compile = true`` the runner hands the loaded program to ``torch.compile`` (inductor,
with weight freezing, which is what lets oneDNN's int8 kernels take over quantized graphs on
x86; see :mod:`.int8` for what a Q/DQ graph gets first). A quantized graph is compiled with
static shapes, once per input shape, starting at load time with the captured example shape.
``model.onnx`` is written too unless ``onnx = false``, as the portable interchange file.
A ``quantize.weight_only`` graph is saved with its portable ``fxopt::matmul_nbits`` op; on
the CPU, loading rewrites each 4-bit one once to torch's int4 kernel (``fxopt::matmul_int4pack``,
weights packed for the CPU that loads it, computed in bfloat16: see
:mod:`fxopt.passes.quantize.nbits_torch`). 8-bit blocks, other devices and CPUs without AVX2
run the op's own kernel (unpack, dequantize, ``linear``: correct, not fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fxopt.engine import hookimpl
from fxopt.engine.backend import Artifact, Backend, BackendOptions, Runner
from fxopt.engine.errors import BackendUnavailableError
from fxopt.engine.ir import ModelIR
from fxopt.plugins.onnx.export import export_onnx

from .int8 import activations_to_uint8, is_quantized, register_quantized_ops


class TorchOptions(BackendOptions):
    device: Literal["cpu", "cuda"] = "cpu"
    compile: bool = False
    onnx: bool = True


class TorchBackend(Backend):
    name = "torch"
    Options = TorchOptions

    def check_available(self) -> None:
        if self.options.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "target.options.device is 'cuda' but torch sees no CUDA device",
                field="target.options.device",
                fix="run on a machine with a GPU and a CUDA build of torch, or use device = 'cpu'",
            )

    def lower(self, ir: ModelIR, out_dir: Path) -> Artifact:
        program = torch.export.export(
            ir.module, ir.example_inputs, dynamic_shapes=ir.dynamic_shapes, strict=False
        )
        torch.export.save(program, str(out_dir / "model.pt2"))
        files = ["model.pt2"]
        if self.options.onnx:
            files += export_onnx(ir, out_dir / "model.onnx")
        return Artifact(
            backend=self.name,
            path="model.pt2",
            files=files,
            info={
                "torch": torch.__version__,
                "compile": self.options.compile,
                "inputs": ir.input_names,
                "quantized": is_quantized(ir.module),
                "example_shapes": [list(t.shape) for t in ir.example_inputs],
                "example_dtypes": [str(t.dtype).removeprefix("torch.") for t in ir.example_inputs],
            },
        )

    def load(self, out_dir: Path, artifact: Artifact) -> Runner:
        quantized = artifact.info.get("quantized", False)
        if quantized:
            register_quantized_ops()
        program = torch.export.load(str(out_dir / artifact.path))
        if self.options.device != "cpu":
            program = on_device(program, self.options.device)
        module = program.module()
        if self.options.device == "cpu":
            # packed here, not in the .pt2: torch's int4 layout depends on the CPU's ISA
            from fxopt.passes.quantize.nbits_torch import use_int4_kernel

            use_int4_kernel(module)
        if quantized and self.options.compile and self.options.device == "cpu":
            activations_to_uint8(module)
        runner = TorchRunner(module, self.options, names=artifact.info["inputs"], static=quantized)
        if self.options.compile and quantized:
            runner.warm_up(artifact.info["example_shapes"], artifact.info["example_dtypes"])
        return runner


def on_device(program: torch.export.ExportedProgram, device: str) -> torch.export.ExportedProgram:
    """The program with its weights *and* the devices its graph names (``arange(device=cpu)``,
    ``to(cpu)``: captured on the CPU) moved, which ``module.to(device)`` alone would miss."""
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, device)


class TorchRunner(Runner):
    """Runs a module on numpy inputs; also the runner of the unoptimized reference model."""

    def __init__(
        self,
        module: torch.nn.Module,
        options: TorchOptions,
        names: list[str] | None = None,
        *,
        static: bool = False,
    ) -> None:
        self.device = torch.device(options.device)
        self.module = module.to(self.device)
        if options.compile:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            # static: one specialised compile per input shape (int8 graphs: the oneDNN
            # kernels are chosen for the shape), instead of one symbolic-shape graph
            self.module = torch.compile(self.module, dynamic=False if static else None)
        if names is None:
            names = [n.name for n in module.graph.nodes if n.op == "placeholder"]
        self.input_names = names

    def warm_up(self, shapes: list[list[int]], dtypes: list[str]) -> None:
        """Compile now, for the shape the model was captured at, not on the first request."""
        args = [
            torch.zeros(shape, dtype=getattr(torch, dtype), device=self.device)
            for shape, dtype in zip(shapes, dtypes, strict=True)
        ]
        with torch.no_grad():
            self.module(*args)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [
            torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device)
            for n in self.input_names
        ]
        with torch.no_grad():
            out = self.module(*args)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]


@hookimpl
def fxopt_register_backends(registry) -> None:
    registry.register(TorchBackend.name, TorchBackend)
