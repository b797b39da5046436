"""int8 for a small CNN trained here on scikit-learn's 8x8 digits: accuracy and speed.

Trains ``examples/digits/digits_model.py``'s CNN (two 3x3 convolutions, two linear layers;
``--width`` channels) on the first 1,280 shuffled digits, quantizes it with ``quantize.int8``
(``ops = ["linear", "conv2d"]``, uint8 activations as in ``recipes/digits-cnn-int8.toml``,
256 training images as calibration), lowers the float and the int8 graphs, and measures in
this process: top-1 accuracy on the 512 held-out digits, and the median time of a batch of
32 for ONNX Runtime fp32 (the peer), torch eager fp32, ours through ONNX Runtime and ours
through the torch backend (``torch.compile``), calls interleaved.

    python benchmarks/int8_digits_cnn.py [--width 64] [--activations uint8] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from digits_example import digits_module
from peers import interleaved

from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.loading import LoadedModel
from fxopt.engine.pass_base import PassContext
from fxopt.engine.specs import InputSpec
from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.plugins.onnxruntime.backend import OnnxRuntimeBackend, OrtOptions
from fxopt.plugins.torch.backend import TorchBackend, TorchOptions, TorchRunner
from fxopt.run.capture import capture
from fxopt.run.recipe import Recipe

TRAIN, TEST, BATCH = 1280, 512, 32


def captured(model: torch.nn.Module):
    spec = InputSpec("x", "float32", ("batch", 1, 8, 8), 0.0, 1.0)
    dims = {"batch": DimRange(min=1, opt=BATCH, max=512)}
    loaded = LoadedModel(
        module=model, task="image-classification", inputs=[spec], dims=dims,
        output_names=["logits"], files=[],
    )  # fmt: skip
    return capture(loaded, [spec], dims, source="digits-cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--observer", default="percentile")
    parser.add_argument("--activations", default="uint8", choices=["uint8", "int8_sym"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    digits = digits_module()
    x, labels = digits.digits_arrays()
    model = digits.train_cnn(x[:TRAIN], labels[:TRAIN], epochs=args.epochs, width=args.width)

    float_ir, ir = captured(model), captured(model)
    calibration = [{"x": torch.from_numpy(x[i : i + BATCH])} for i in range(0, 256, BATCH)]
    ctx = PassContext(
        recipe=Recipe(),
        batches=lambda split: calibration,
        reference=lambda feeds: [],
        evaluate=lambda candidate: {},
        cache_dir=Path(tempfile.mkdtemp(prefix="int8-cnn-cache-")),
        output=Output(),
    )
    config = Int8Config(
        ops=["linear", "conv2d"], observer=args.observer, activations=args.activations
    )
    start = time.perf_counter()
    result = QuantizeInt8(config).run(ir, ctx)
    quantize_s = time.perf_counter() - start

    work = Path(tempfile.mkdtemp(prefix="int8-cnn-"))

    def lower(backend, graph, name):
        (work / name).mkdir()
        artifact = backend.lower(graph, work / name)
        return backend.load(work / name, artifact)

    ort = OnnxRuntimeBackend(OrtOptions(intra_op_threads=args.threads, inter_op_threads=1))
    runners = {
        "ORT fp32": lower(ort, float_ir, "fp32"),
        "torch eager fp32": TorchRunner(model, TorchOptions(), names=["x"]),
        "ours, ORT int8": lower(ort, ir, "ort"),
        "ours, torch.compile int8": lower(
            TorchBackend(TorchOptions(compile=True, onnx=False)), ir, "torch"
        ),
    }
    test_x, test_y = x[TRAIN : TRAIN + TEST], labels[TRAIN : TRAIN + TEST]
    accuracy = {
        name: float(
            (
                np.concatenate(
                    [r.run({"x": test_x[i : i + BATCH]})[0] for i in range(0, TEST, BATCH)]
                ).argmax(axis=1)
                == test_y
            ).mean()
        )
        for name, r in runners.items()
    }
    feeds = {"x": test_x[:BATCH]}
    ms = {
        name: timing["ms"]
        for name, timing in interleaved(runners, feeds, args.rounds, args.iters).items()
    }
    load_end = os.getloadavg()

    import onnxruntime

    print(
        f"\ndigits CNN (width {args.width}), batch {BATCH}, {args.threads} threads, medians of "
        f"{args.rounds}x{args.iters} interleaved calls; top-1 on {TEST} held-out digits"
    )
    print("| path | ms / batch | vs ORT fp32 | top-1 |")
    print("|---|---|---|---|")
    for name in runners:
        print(
            f"| {name} | {ms[name]:.3f} | {ms['ORT fp32'] / ms[name]:.2f}x "
            f"| {accuracy[name] * 100:.2f}% |"
        )
    print(
        f"quantized {result.metrics['quantized_ops']} ({args.observer}, {args.activations}) "
        f"in {quantize_s:.1f} s; "
        f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


if __name__ == "__main__":
    main()
