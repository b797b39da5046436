"""The TensorRT backend (entry point ``tensorrt``).

``backend``: the backend (ONNX export, engine build); ``build``: the engine build itself;
``compat``: the static checker of what TensorRT's ONNX parser accepts, whose table is the data
file ``onnx_ops.json``; ``profiles``: optimization profiles from the recipe's dynamic axes;
``runtime``: the engine runner; ``preflight``: ``optimize check``, every problem before a build.
``tensorrt`` itself is imported only when a build or a run needs it.
"""
