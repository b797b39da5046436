"""Running a TensorRT plan: ``execute_async_v3`` on device buffers that torch CUDA tensors own.

torch allocates the input and output buffers (no pycuda, no cuda-python), TensorRT reads and
writes them on torch's current CUDA stream, and the runner hands numpy back like every other
backend's. With several optimization profiles, the first that covers the inputs is selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxopt.engine.backend import Runner
from fxopt.engine.specs import InputSpec

from .profiles import Profile, check_covered

#: TensorRT ``DataType`` member name -> torch dtype
TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorRTRunner(Runner):
    def __init__(
        self,
        plan: Path,
        profiles: Sequence[Profile],
        specs: Sequence[InputSpec],
        *,
        device: int = 0,
        trt: Any = None,
    ) -> None:
        if trt is None:
            import tensorrt as trt
        self.device = torch.device("cuda", device)
        self.profiles = list(profiles)
        self.specs = list(specs)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {plan}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: TORCH_DTYPES[self.engine.get_tensor_dtype(n).name] for n in names}
        self._profile = 0

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        shapes = {n: feeds[n].shape for n in self.input_names}
        check_covered(self.profiles, self.specs, shapes)
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            self._select_profile(shapes, stream)
            inputs = [
                torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device, self.dtypes[n])
                for n in self.input_names
            ]
            for name, tensor in zip(self.input_names, inputs, strict=True):
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            outputs = []
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, out.data_ptr())
                outputs.append(out)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (its log above says why)")
            stream.synchronize()
        return [o.float().cpu().numpy() for o in outputs]

    def _select_profile(self, shapes: dict[str, tuple[int, ...]], stream) -> None:
        for index, profile in enumerate(self.profiles):
            if all(profile[n].covers(s) for n, s in shapes.items() if n in profile):
                if index != self._profile:
                    self.context.set_optimization_profile_async(index, stream.cuda_stream)
                    self._profile = index
                return
