"""Built-in models: small CNNs fxopt trains itself, named in a recipe as ``builtin:<name>``.

Each is trained here, deterministically (a fixed seed, one thread, the caller's random state
left alone), on the first images of the ``digits`` dataset source (scikit-learn's 8x8
digits, shuffled once), so a recipe reading that source verifies on images the model never
saw. Trained weights are kept in memory for the process, never written anywhere.

``digits-cnn``
    Two 3x3 convolutions (16, 32 channels) and two linear layers (64 hidden): 15 epochs of
    Adam on the first 1,280 images; 99.2% top-1 on the other 517; ~2 s on one core.
    ``examples/digits/digits_model.py`` trains and saves this very model.
``digits-resnet``
    A residual CNN: conv+BN stem (64 channels), a residual block, a strided conv (128), a
    second residual block, global pooling, a linear classifier: 20 epochs of AdamW with a
    cosine schedule on the first 1,164 images (the calibration and fine-tune slices of
    ``recipes/digits-cnn-prune.toml``); 99.4% top-1 on the other 633; ~9 s on one core.

Both take ``x`` float32 [batch, 1, 8, 8] (pixels in [0, 1], batch 1 to 512) and return the
10 class logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fxopt.engine import hookimpl
from fxopt.engine.config import DimRange
from fxopt.engine.errors import ModelError
from fxopt.engine.loading import BUILTIN_SUFFIX, LoadedModel, Loader, LoadOptions, builtin_name
from fxopt.engine.specs import InputSpec
from fxopt.plugins.data.sources import digits_arrays

#: images ``digits-cnn`` trains on (the fine-tune slice of ``recipes/digits-adversarial.toml``)
TRAIN = 1280
#: images ``digits-resnet`` trains on: the calibration (64) and fine-tune (1,100) slices of
#: ``recipes/digits-cnn-prune.toml``; the held-out rest (633) verifies
RESNET_TRAIN = 64 + 1100
MAX_BATCH = 512
#: the language model of :mod:`fxopt.plugins.huggingface.builtin_lm`
LANGUAGE_MODEL = "stdlib-lm"


class SmallCNN(nn.Module):
    """Two convolutions and two linear layers: ~98% clean accuracy on digits in seconds."""

    def __init__(self, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class DigitsResNet(nn.Module):
    """Conv+BN stem, a residual block, a strided conv, a residual block, global pooling,
    a linear classifier: every conv group couples through a residual add, what structured
    pruning must keep consistent."""

    def __init__(self, width: int = 64) -> None:
        from fxopt.testing.models import ResidualBlock

        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block1 = ResidualBlock(width)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.block2 = ResidualBlock(2 * width)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch for a training run, on one thread (results independent of the core count),
    with gradients on (a model may first be asked for under ``no_grad``), leaving the
    caller's random state, thread count and grad mode as they were."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def train_cnn(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 15,
    seed: int = 0,
    width: int = 16,
    hidden: int = 64,
) -> SmallCNN:
    """Plain (non-adversarial) training of :class:`SmallCNN` with Adam, batch 64."""
    with deterministic(seed):
        model = SmallCNN(width, hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        xs, ys = torch.from_numpy(x), torch.from_numpy(labels)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for index in torch.randperm(len(xs), generator=generator).split(64):
                loss = nn.functional.cross_entropy(model(xs[index]), ys[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model.eval()


def train_resnet(
    x: np.ndarray, labels: np.ndarray, *, epochs: int = 20, seed: int = 0, width: int = 64
) -> DigitsResNet:
    """:class:`DigitsResNet` trained with AdamW (lr 2e-3) and a cosine schedule, batch 64."""
    with deterministic(seed):
        model = DigitsResNet(width)
        xs, ys = torch.from_numpy(x), torch.from_numpy(labels)
        steps = epochs * -(-len(xs) // 64)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        model.train()
        for _ in range(epochs):
            for index in torch.randperm(len(xs)).split(64):
                loss = nn.functional.cross_entropy(model(xs[index]), ys[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def export_pt2(model: nn.Module, path: Path, max_batch: int = MAX_BATCH) -> Path:
    """Save ``model`` with ``torch.export`` (dynamic batch 1..``max_batch``), for the ``pt2``
    loader."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    program = torch.export.export(
        model.eval(), (torch.zeros(4, 1, 8, 8),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    return path


def write_digits(out_dir: Path, *, train: int = TRAIN, epochs: int = 15, width: int = 16) -> Path:
    """Write ``digits.npz`` (all digits in the ``digits`` source's order: ``x``, ``labels``)
    and ``model.pt2`` (:class:`SmallCNN` trained on the first ``train``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    x, labels = digits_arrays()
    np.savez(out_dir / "digits.npz", x=x, labels=labels)
    model = train_cnn(x[:train], labels[:train], epochs=epochs, width=width)
    export_pt2(model, out_dir / "model.pt2")
    return out_dir


@dataclass(frozen=True)
class BuiltinModel:
    """How one built-in model is made: a fresh module, and its training on the digits."""

    make: Callable[[], nn.Module]
    train: Callable[[np.ndarray, np.ndarray], nn.Module]


BUILTIN_MODELS = {
    "digits-cnn": BuiltinModel(
        make=SmallCNN, train=lambda x, y: train_cnn(x[:TRAIN], y[:TRAIN], epochs=15)
    ),
    "digits-resnet": BuiltinModel(
        make=DigitsResNet,
        train=lambda x, y: train_resnet(x[:RESNET_TRAIN], y[:RESNET_TRAIN], epochs=20),
    ),
}


def build_model(name: str) -> nn.Module:
    """A fresh copy of the trained built-in model ``name``, in eval mode (trained on the first
    call in this process; ``ImportError`` without scikit-learn)."""
    model = BUILTIN_MODELS[name].make()
    model.load_state_dict(_trained(name))
    return model.eval()


@functools.cache
def _trained(name: str) -> dict[str, torch.Tensor]:
    x, labels = digits_arrays()
    model = BUILTIN_MODELS[name].train(x, labels)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Logits(nn.Module):
    """The model's logits as a one-element tuple, as the engine expects outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(x),)


class BuiltinLoader(Loader):
    """Models fxopt trains itself: ``path = "builtin:<name>"`` (digits-cnn, digits-resnet,
    stdlib-lm).

    It claims every ``builtin:`` spec file, so a name it does not know gets an error listing
    the ones it does (a plugin building other ``builtin:`` models is chosen with
    ``[model] loader``)."""

    name = "builtin"
    builtin_models = (*BUILTIN_MODELS, LANGUAGE_MODEL)

    def can_load(self, path: Path) -> bool:
        return path.name.endswith(BUILTIN_SUFFIX) and builtin_name(path) is not None

    def load(self, path: Path, options: LoadOptions) -> LoadedModel:
        name = builtin_name(path)
        if name == LANGUAGE_MODEL:
            return _language_model(path, options)
        if name not in BUILTIN_MODELS:
            raise ModelError(
                f"no built-in model {name!r}",
                field="model.path",
                fix=f"use one of: {', '.join(f'builtin:{n}' for n in self.builtin_models)}",
            )
        try:
            model = build_model(name)
        except ImportError as exc:
            raise ModelError(
                f"builtin:{name} trains on the digits scikit-learn ships, and scikit-learn is "
                f"not installed ({exc})",
                field="model.path",
                fix="pip install scikit-learn (or pip install 'fxopt[digits]')",
            ) from None
        return LoadedModel(
            module=_Logits(model),
            task=options.task or "image-classification",
            inputs=[InputSpec("x", "float32", ("batch", 1, 8, 8), 0.0, 1.0)],
            dims={"batch": DimRange(min=1, opt=32, max=MAX_BATCH)},
            output_names=["logits"],
            files=[path],
        )


def _language_model(path: Path, options: LoadOptions) -> LoadedModel:
    """``builtin:stdlib-lm``, trained once per process and loaded as the Hugging Face model
    directory it is saved as (:mod:`fxopt.plugins.huggingface.builtin_lm`)."""
    from fxopt.plugins.huggingface import builtin_lm
    from fxopt.plugins.huggingface.loader import HuggingFaceLoader

    options = dataclasses.replace(options, task=options.task or "causal-lm")
    loaded = HuggingFaceLoader().load(builtin_lm.model_dir(), options)
    return dataclasses.replace(loaded, files=[path])


@hookimpl
def fxopt_register_loaders(registry) -> None:
    registry.register(BuiltinLoader.name, BuiltinLoader)
