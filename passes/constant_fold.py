"""``cleanup.constant_fold``: evaluate subgraphs that depend only on constants, once.

A node whose inputs are all parameters, buffers or literals (a weight transpose, a scale
computed from a parameter, an ``arange`` of a fixed size) is computed at build time and
replaced by a buffer. Nothing that depends on a model input is touched, nor random or
in-place ops, nor a value an in-place op writes (GPT-2's and Llama's ``detach_`` of a
computed mask: on a buffer it would change the buffer, and a ``torch.export`` archive
refuses it); results larger than ``max_bytes`` stay computed at run time, so folding never
balloons the model (an ``expand`` of a constant can be huge).

Parameters folded into new constants stop being trainable: run it after fine-tuning.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import fx

from fxopt.engine.pass_base import Pass, PassConfig, PassResult

IMPURE_MARKERS = ("rand", "dropout", "_assert", "copy_", "empty", "sym_")


class Config(PassConfig):
    max_bytes: int = Field(default=64 * 2**20, ge=0, description="largest tensor to fold")


class ConstantFold(Pass):
    name = "cleanup.constant_fold"
    reads_target = False
    may_change_nothing = True
    edits_weights_in_place = False  # folded values are new buffers
    Config = Config

    def run(self, ir, ctx) -> PassResult:
        module, graph = ir.module, ir.graph
        with torch.no_grad():
            values = _constant_values(module, graph)
        folded = 0
        for node, value in values.items():
            if node.op == "get_attr" or not isinstance(value, torch.Tensor):
                continue
            if all(user in values for user in node.users):
                continue  # an interior node: only its frontier needs a value at run time
            if any(_mutates(user, node) for user in node.users):
                continue  # a buffer written in place would carry over from call to call
            if value.numel() * value.element_size() > self.config.max_bytes:
                continue
            name = f"_folded_{folded}"
            module.register_buffer(name, value.detach().clone().contiguous())
            with graph.inserting_before(node):
                replacement = graph.get_attr(name)
            replacement.meta.update(node.meta)
            node.replace_all_uses_with(replacement)
            folded += 1
        if folded:
            graph.eliminate_dead_code()
            module.recompile()
        return PassResult(ir, modified=folded > 0, metrics={"folded": folded})


def _constant_values(module: torch.nn.Module, graph: fx.Graph) -> dict[fx.Node, object]:
    """Every node computable from attributes and literals alone, with its value."""
    values: dict[fx.Node, object] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            values[node] = _fetch(module, node.target)
        elif (
            node.op == "call_function"
            and _pure(node)
            and all(n in values for n in node.all_input_nodes)
        ):
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            values[node] = node.target(*args, **kwargs)
    return values


def _fetch(module: torch.nn.Module, target: str):
    owner = module
    for part in target.split("."):
        owner = getattr(owner, part)
    return owner


def _mutates(user: fx.Node, node: fx.Node) -> bool:
    """``user`` writes ``node``'s value in place (``detach_``, ``add_``: its schema marks
    that argument as written)."""
    schema = getattr(user.target, "_schema", None)
    if schema is None:
        return False
    for index, argument in enumerate(schema.arguments):
        value = user.args[index] if index < len(user.args) else user.kwargs.get(argument.name)
        if value is node and argument.alias_info is not None and argument.alias_info.is_write:
            return True
    return False


def _pure(node: fx.Node) -> bool:
    name = str(node.target)
    return not node.is_impure() and not any(marker in name for marker in IMPURE_MARKERS)
