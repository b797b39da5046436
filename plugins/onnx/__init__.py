"""The ONNX export the ONNX Runtime and TensorRT backends (and the torch backend's
``model.onnx``) lower through; not part of the engine core.

``export``: the IR re-exported to ONNX with the recipe's axis names, weights as external
data; ``attention``: the attention rewrite to plain math applied first, on a graph copy;
``translations``: the ONNX translations of custom ops that plugins contribute (a pass that
writes its own op registers how it exports, e.g. ``quantize.weight_only``'s MatMulNBits).
"""
