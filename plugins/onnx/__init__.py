"""The ONNX export the ONNX Runtime and TensorRT backends (and the torch backend's
``model.onnx``) lower through; not part of the engine core.

``export``: the IR re-exported to ONNX with the recipe's axis names, weights as external
data; ``attention``: the attention rewrite to plain math applied first, on a graph copy.
"""
