"""Save the digits CNN and its data as files: ``model.pt2`` and ``digits.npz``.

The shipped digits recipes need none of this: they name ``path = "builtin:digits-cnn"`` and
``source = "digits"``, and fxopt trains the model itself (``fxopt.plugins.data.builtin_models``).
This script writes the same model and data as files, for a recipe of your own that reads
them with the ``pt2`` loader and the ``npz`` source, or for another tool::

    python examples/digits/digits_model.py digits-files

scikit-learn ships the 8x8 handwritten digits (1,797 images, no download). ``digits.npz``
holds all of them (arrays ``x`` and ``labels``) in the order of the ``digits`` source (shuffled
once with a fixed seed, pixels scaled to [0, 1]); ``model.pt2`` is a small CNN trained with
plain cross-entropy on the first ``--train`` images and exported with ``torch.export``. With
the defaults it is ``builtin:digits-cnn``, weight for weight.

Tests and benchmarks import it for the same model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fxopt.plugins.data.builtin_models import TRAIN, SmallCNN, export_pt2, train_cnn, write_digits
from fxopt.plugins.data.sources import digits_arrays

__all__ = ["TRAIN", "SmallCNN", "build", "digits_arrays", "export_pt2", "train_cnn"]


def build(out_dir: Path, *, train: int = TRAIN, epochs: int = 15, width: int = 16) -> Path:
    """Write ``digits.npz`` and ``model.pt2`` into ``out_dir``; returns ``out_dir``."""
    return write_digits(out_dir, train=train, epochs=epochs, width=width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=TRAIN)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    print(build(args.out_dir, train=args.train, epochs=args.epochs, width=args.width))


if __name__ == "__main__":
    main()
