"""fxopt's built-in plugins, one package per library they wrap.

Each registers through the ``fxopt.plugins`` entry-point group exactly as a third-party
plugin does (see ``[project.entry-points."fxopt.plugins"]`` in ``pyproject.toml``):
``onnxruntime``, ``tensorrt`` and ``torch`` hold the backends (``torch`` also the ``.pt2``
loader), ``huggingface`` the Hugging Face loader, ``data`` the dataset sources and the
``builtin:`` models, and ``onnx`` the ONNX export the backends lower through.

This package is ``fxopt.plugins``: its ``torch`` and ``onnx`` subpackages never shadow the
real ``torch`` and ``onnx``, which every module imports absolutely.
"""
