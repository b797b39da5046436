"""Where an adversarial perturbation enters the model: pixels, or the input embeddings.

Images are perturbed at their float input. Text models take token ids, so the perturbation
goes on the output of the word-embedding lookup instead: :class:`EmbeddingSite` inserts one
``call_module`` node right after the ``aten.embedding`` that reads the token-id input. That
module adds the current ``delta`` when one is set and is the identity otherwise; it is removed
again when training ends, so later passes and lowering never see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import fx

from fxopt.engine.errors import RecipeError
from fxopt.engine.ir import ModelIR

PROBE_NAME = "fxopt_adversarial_probe"


class AddPerturbation(torch.nn.Module):
    """Identity, or ``x + delta`` while a perturbation is set."""

    def __init__(self) -> None:
        super().__init__()
        self.delta: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.delta is None else x + self.delta.to(x.dtype)


class Site:
    """A place to add ``delta``; ``args(batch, delta)`` gives the model's positional inputs."""

    kind: str

    def __init__(self, input_names: list[str]) -> None:
        self.input_names = input_names

    def shape(self, batch: dict[str, torch.Tensor]) -> torch.Size:
        raise NotImplementedError

    def args(
        self, batch: dict[str, torch.Tensor], delta: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        return tuple(batch[name] for name in self.input_names)

    def clean_value(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The tensor being perturbed, when it is a model input (for clamping)."""
        return None

    def remove(self) -> None:
        """Undo any change made to the graph."""


class PixelSite(Site):
    kind = "pixels"

    def __init__(self, input_names: list[str], name: str) -> None:
        super().__init__(input_names)
        self.name = name

    def shape(self, batch):
        return batch[self.name].shape

    def args(self, batch, delta):
        return tuple(
            batch[n] + delta.to(batch[n].dtype)
            if n == self.name and delta is not None
            else batch[n]
            for n in self.input_names
        )

    def clean_value(self, batch):
        return batch[self.name]


class EmbeddingSite(Site):
    kind = "embeddings"

    def __init__(self, ir: ModelIR, node: fx.Node, ids_name: str) -> None:
        super().__init__(ir.input_names)
        self.module = ir.module
        self.ids_name = ids_name
        weight = ir.module.get_parameter(node.args[0].target)
        self.hidden = int(weight.shape[-1])
        self.probe = AddPerturbation()
        ir.module.add_submodule(PROBE_NAME, self.probe)
        with ir.graph.inserting_after(node):
            self.node = ir.graph.call_module(PROBE_NAME, (node,))
        node.replace_all_uses_with(self.node, delete_user_cb=lambda user: user is not self.node)
        ir.module.recompile()

    def shape(self, batch):
        return torch.Size([*batch[self.ids_name].shape, self.hidden])

    def args(self, batch, delta):
        self.probe.delta = delta
        return super().args(batch, delta)

    def remove(self) -> None:
        source = self.node.args[0]
        self.node.replace_all_uses_with(source)
        self.module.graph.erase_node(self.node)
        self.module.delete_submodule(PROBE_NAME)
        self.module.recompile()


def find_site(ir: ModelIR, target: str, *, file: str, field: str) -> Site:
    """The site the recipe's ``target`` names (``auto``: pixels if a float input exists)."""
    floats = [s.name for s in ir.inputs if s.torch_dtype.is_floating_point]
    if target in ("auto", "pixels") and floats:
        return PixelSite(ir.input_names, floats[0])
    if target in ("auto", "embeddings"):
        ids = {s.name for s in ir.inputs if not s.torch_dtype.is_floating_point}
        for node in ir.graph.nodes:
            if (
                node.op == "call_function"
                and node.target == torch.ops.aten.embedding.default
                and isinstance(node.args[1], fx.Node)
                and node.args[1].op == "placeholder"
                and node.args[1].name in ids
                and node.args[0].op == "get_attr"
            ):
                return EmbeddingSite(ir, node, node.args[1].name)
    found = "float inputs: " + (", ".join(floats) or "none")
    raise RecipeError(
        f"no place for a {target!r} perturbation in this model ({found}; no embedding lookup "
        "of a token-id input)",
        file=file,
        field=field,
        fix='use target = "pixels" for image models, "embeddings" for text models, or '
        'method = "none"',
    )


@contextmanager
def site_in(ir: ModelIR, target: str, *, file: str, field: str) -> Iterator[Site]:
    site = find_site(ir, target, file=file, field=field)
    try:
        yield site
    finally:
        site.remove()
