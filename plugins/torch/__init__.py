"""The torch backend (entry point ``torch``) and the ``.pt2`` loader (entry point ``pt2``).

``backend``: the IR saved as a ``torch.export`` archive (``model.pt2``), run eagerly or
compiled; ``int8``: what the backend does to a Q/DQ graph before ``torch.compile`` runs it;
``loader``: any ``torch.export`` archive (the format ``backend`` writes) as a model to optimize.

Every module here imports the real ``torch`` (all imports are absolute): this package is
``fxopt.plugins.torch`` and never shadows it.
"""
