"""Train/eval mode for exported graphs, which bake the mode into the ops.

``torch.export`` records dropout as ``aten.dropout(x, p, train=False)`` and BatchNorm as
``aten.batch_norm(..., training=False, ...)``, and ``ep.module().train()`` raises
``NotImplementedError`` ("Calling train() is not supported yet"). torchao's
``move_exported_model_to_train`` rewrites the same ops by pattern matching; flipping the one
boolean argument in place does the same without a dependency, and
:meth:`GraphMode.evaluating` undoes it exactly, so the graph handed to later passes is the
eval graph again.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import fx

from fxopt.engine.errors import RecipeError

#: op -> index of its "training" argument
DROPOUT_OPS = {
    torch.ops.aten.dropout.default: 2,
    torch.ops.aten.feature_dropout.default: 2,
    torch.ops.aten.alpha_dropout.default: 2,
}
BATCHNORM_OPS = {torch.ops.aten.batch_norm.default: 5}


class GraphMode:
    """The dropout / BatchNorm nodes a recipe wants in training mode, and a switch."""

    def __init__(self, module: fx.GraphModule, *, dropout: bool, batchnorm: bool) -> None:
        self.module = module
        self.nodes: list[tuple[fx.Node, int]] = []
        self.counts = {"dropout": 0, "batchnorm": 0}
        tables = ((DROPOUT_OPS, dropout, "dropout"), (BATCHNORM_OPS, batchnorm, "batchnorm"))
        for node in module.graph.nodes:
            for table, wanted, kind in tables:
                index = table.get(node.target) if node.op == "call_function" else None
                if wanted and index is not None and len(node.args) > index:
                    self.nodes.append((node, index))
                    self.counts[kind] += 1
        self.training = False

    def set(self, training: bool) -> None:
        if training == self.training or not self.nodes:
            self.training = training
            return
        for node, index in self.nodes:
            args = list(node.args)
            args[index] = training
            node.args = tuple(args)
        self.module.recompile()
        self.training = training

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode inside the block, the previous mode after."""
        before = self.training
        self.set(False)
        try:
            yield
        finally:
            self.set(before)


def used_parameters(module: fx.GraphModule) -> dict[str, torch.nn.Parameter]:
    """Parameters the graph reads; others (an unused pooler) get no gradient, and DDP would
    wait for theirs forever."""
    targets = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    return {name: p for name, p in module.named_parameters() if name in targets}


def without_frozen(
    parameters: dict[str, torch.nn.Parameter], patterns: list[str], *, file: str, field: str
) -> dict[str, torch.nn.Parameter]:
    """``parameters`` less the ones the ``freeze`` patterns match; a pattern matching none,
    or freezing them all, is a recipe error."""
    frozen: set[str] = set()
    for index, pattern in enumerate(patterns):
        hits = {name for name in parameters if fnmatch.fnmatchcase(name, pattern)}
        if not hits:
            shown = ", ".join(list(parameters)[:6])
            raise RecipeError(
                f"freeze pattern {pattern!r} matches no trained parameter",
                file=file,
                field=f"{field}[{index}]",
                fix=f"patterns are fnmatch globs over parameter names, e.g. {shown}",
            )
        frozen |= hits
    left = {name: p for name, p in parameters.items() if name not in frozen}
    if not left:
        raise RecipeError(
            "freeze leaves no parameter to train",
            file=file,
            field=field,
            fix="freeze fewer parameters, or remove the finetune pass",
        )
    return left


@contextmanager
def only_trainable(module: torch.nn.Module, names: set[str]) -> Iterator[None]:
    """``requires_grad`` on exactly ``names`` inside the block, restored after."""
    before = {name: p.requires_grad for name, p in module.named_parameters()}
    for name, p in module.named_parameters():
        p.requires_grad_(name in names)
    try:
        yield
    finally:
        for name, p in module.named_parameters():
            p.requires_grad_(before[name])


def move_graph(module: fx.GraphModule, device: torch.device) -> None:
    """Move parameters, buffers, tensor attributes and the ``device=`` baked into nodes."""
    module.to(device)
    touched = False
    for node in module.graph.nodes:
        current = node.kwargs.get("device")
        if isinstance(current, torch.device) and current != device:
            node.kwargs = {**node.kwargs, "device": device}
            touched = True
    for name, value in list(vars(module).items()):
        if isinstance(value, torch.Tensor) and value.device != device:
            setattr(module, name, value.to(device))
    if touched:
        module.recompile()
