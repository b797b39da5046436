"""The ONNX Runtime backend (entry point ``onnxruntime``), the embedded default on any CPU.

``backend``: the backend and its runner (``model.onnx`` optimized offline by ONNX Runtime
into ``model.ort.onnx``); ``qdq``: the rewrite of an exported Q/DQ graph into the layout
ONNX Runtime's int8 CPU kernels fuse.
"""
