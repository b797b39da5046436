#!/usr/bin/env bash
# One command, at most 8 minutes, on a machine with an NVIDIA GPU: fxopt's cast.fp16 through the
# torch backend on CUDA (eager and torch.compile) for MiniLM (batch 32, sequence 128) and a
# small CNN, against eager fp32 and torch.autocast in the same process, plus the TensorRT build
# when `tensorrt` imports. Prints a table of latency ratios vs eager fp32 and cosine fidelity.
#
#   benchmarks/gpu_check.sh                  # defaults
#   benchmarks/gpu_check.sh --no-compile     # extra arguments go to benchmarks/gpu_check.py
#
# Python: $PYTHON if set; else the venv $GPU_CHECK_VENV (default ~/.cache/fxopt/venv-gpu),
# created with --system-site-packages so the CUDA build of torch the machine already has is
# used, with fxopt installed into it without dependencies. Nothing is downloaded unless a
# dependency is missing. GPU_CHECK_SECONDS (default 480) bounds the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${GPU_CHECK_SECONDS:-480}
python=${PYTHON:-}
if [[ -z "$python" ]]; then
    venv=${GPU_CHECK_VENV:-$HOME/.cache/fxopt/venv-gpu}
    if [[ ! -x "$venv/bin/python" ]]; then
        mkdir -p "$(dirname "$venv")"
        python3 -m venv --system-site-packages "$venv"
    fi
    python=$venv/bin/python
fi

if ! "$python" -c "import fxopt.engine, fxopt.passes.cast" 2>/dev/null; then
    "$python" -m pip install --quiet --no-deps --no-build-isolation -e . \
        || "$python" -m pip install --quiet --no-deps -e .
fi

missing=$("$python" - <<'PY'
import importlib.util
modules = {"torch": "torch", "transformers": "transformers", "onnx": "onnx",
           "onnxscript": "onnxscript", "onnxruntime": "onnxruntime", "pluggy": "pluggy",
           "pydantic": "pydantic", "rich": "rich", "safetensors": "safetensors",
           "tokenizers": "tokenizers"}
print(" ".join(pkg for mod, pkg in modules.items() if importlib.util.find_spec(mod) is None))
PY
)
if [[ -n "$missing" ]]; then
    echo "installing missing dependencies: $missing"
    "$python" -m pip install --quiet $missing || {
        echo "could not install $missing (no network?); set PYTHON to an interpreter that has them" >&2
        exit 2
    }
fi

"$python" - <<'PY' || exit 2
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device: this check needs a GPU")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
PY

exec timeout --kill-after=10 "$budget" "$python" benchmarks/gpu_check.py "$@"
