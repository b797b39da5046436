"""Small graph edits the quantization rewrites share.

Parameters are always *replaced*, never changed in place: a GraphModule from
``torch.export(...).module()`` can share storage with other copies of the model (the eager
reference among them), and an in-place ``mul_`` would silently change those too.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

#: node.meta key marking nodes a rewrite added that must stay float (outlier side paths)
FLOAT_META = "fxopt.quantize.float"


def module_name(node: Node) -> str:
    """Qualified name of the innermost module that produced ``node`` (``""`` if unknown),
    e.g. ``model.encoder.layer.3.output.dense``."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def attr_tensor(gm: GraphModule, node: Node) -> torch.Tensor:
    """The tensor a ``get_attr`` node reads."""
    owner_path, _, attr = node.target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    return getattr(owner, attr)


def replace_attr_tensor(gm: GraphModule, node: Node, value: torch.Tensor) -> None:
    """Point a ``get_attr`` at a new tensor (a new Parameter if it was one)."""
    owner_path, _, attr = node.target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if isinstance(getattr(owner, attr), torch.nn.Parameter):
        setattr(owner, attr, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
    else:
        owner.register_buffer(attr, value.detach().clone())


def add_constant(gm: GraphModule, base: str, value: torch.Tensor) -> str:
    """Register ``value`` as a new buffer with a free name derived from ``base``."""
    name, index = base, 0
    while hasattr(gm, name):
        index += 1
        name = f"{base}_{index}"
    gm.register_buffer(name, value.detach().clone())
    return name


def drop_unused_tensors(gm: GraphModule) -> list[str]:
    """Delete the parameters and buffers no node reads; return their names.

    ``convert_pt2e`` folds each weight's quantize step into a new int8 constant but leaves the
    float weight registered on the module: exported as is, the artifact would carry both.
    """
    used = {str(n.target) for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}

    def read(name: str) -> bool:
        return any(name == u or name.startswith(u + ".") for u in used)

    dropped = []
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if read(name):
            continue
        owner_path, _, attr = name.rpartition(".")
        delattr(gm.get_submodule(owner_path) if owner_path else gm, attr)
        dropped.append(name)
    gm.delete_all_unused_submodules()
    return dropped


def copy_meta(new: Node, like: Node) -> None:
    """Give an inserted node the module stack of the node it serves (for names, skips)."""
    if "nn_module_stack" in like.meta:
        new.meta["nn_module_stack"] = dict(like.meta["nn_module_stack"])
