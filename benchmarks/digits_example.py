"""The digits CNN, its training and data, for the benchmarks: from the installed package.

The model and training code live in ``fxopt.plugins.data.builtin_models`` (what
``path = "builtin:digits-cnn"`` in a recipe loads), the data in ``fxopt.plugins.data.sources``
(the ``digits`` source); ``examples/digits/digits_model.py`` saves them as files. The
benchmarks call ``digits_module()`` for the lot, as they did when it loaded the example.
"""

from __future__ import annotations

from types import SimpleNamespace

from fxopt.plugins.data import builtin_models
from fxopt.plugins.data.sources import digits_arrays


def digits_module() -> SimpleNamespace:
    """``digits_arrays``, ``SmallCNN``, ``train_cnn``, ``export_pt2``, ``build`` (writes
    ``digits.npz`` and ``model.pt2`` into a directory) and ``TRAIN``."""
    return SimpleNamespace(
        TRAIN=builtin_models.TRAIN,
        SmallCNN=builtin_models.SmallCNN,
        build=builtin_models.write_digits,
        digits_arrays=digits_arrays,
        export_pt2=builtin_models.export_pt2,
        train_cnn=builtin_models.train_cnn,
    )
