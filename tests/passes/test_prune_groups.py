"""Group discovery: which parameter slices ``prune.structured`` couples, per architecture.

Each model's groups are checked by hand and, where Torch-Pruning can trace the model too
(ResNet-style CNN, BERT, ViT; not GPT-2's ``Conv1D``), against Torch-Pruning's dependency
graph as an oracle: the same modules must end up coupled the same way.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fxopt.passes.prune import ChannelDependencies, DependencyGraph
from tests.passes.prune_models import bert_ir, cnn_ir, gpt2_ir, vit_ir

COUPLED_TYPES = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d, nn.Embedding)


def prunable(deps: DependencyGraph) -> dict[str, tuple[str, int, int]]:
    return {g.name: (g.kind, g.size, g.unit) for g in deps.prunable}


def slices(deps: DependencyGraph, name: str) -> set[tuple[str, int]]:
    return {(s.attr, s.axis) for s in deps.group(name).slices}


def our_clusters(model: nn.Module, deps: DependencyGraph) -> set[frozenset]:
    """Groups that share a derived space (heads and their head_dim) merged, as sets of
    ``(module, "in" | "out")`` over the module types Torch-Pruning prunes."""
    parent = {g.id: g.id for g in deps.groups}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    owner: dict[int, int] = {}
    for group in deps.groups:
        for piece in group.slices:
            if piece.space in owner:
                parent[find(group.id)] = find(owner[piece.space])
            owner.setdefault(piece.space, group.id)
    clusters: dict[int, set] = {}
    for group in deps.groups:
        members = clusters.setdefault(find(group.id), set())
        for piece in group.slices:
            path, _, param = piece.attr.rpartition(".")
            module = model.get_submodule(path)
            if param != "weight" or not isinstance(module, COUPLED_TYPES):
                continue
            if isinstance(module, nn.Embedding):
                if piece.axis == 1:
                    members.add((path, "out"))
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and piece.axis in (0, 1):
                depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
                members.add((path, "out" if piece.axis == 0 or depthwise else "in"))
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                members.add((path, "out"))
    # Torch-Pruning builds groups from layers' outputs: the input's channels are none
    return {frozenset(m) for m in clusters.values() if any(role == "out" for _, role in m)}


def oracle_clusters(model: nn.Module, example: torch.Tensor) -> set[frozenset]:
    tp = pytest.importorskip("torch_pruning", reason="torch-pruning (the test extra) is missing")
    with warnings.catch_warnings():  # ViT's class token is a bare parameter: it says so
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {module: name for name, module in model.named_modules()}
    out = set()
    for group in graph.get_all_groups(root_module_types=list(COUPLED_TYPES)):
        members = set()
        for dep, _ in group:
            module = dep.target.module
            if isinstance(module, COUPLED_TYPES):
                role = "in" if "in_channels" in dep.handler.__name__ else "out"
                members.add((names[module], role))
        if members:
            out.add(frozenset(members))
    return out


def test_resnet_style_cnn_groups():
    _, ir = cnn_ir()
    deps = ir.analysis(ChannelDependencies)
    assert prunable(deps) == {
        "stem": ("conv", 16, 1),
        "block.c1": ("conv", 16, 1),
        "down": ("conv", 32, 1),
        "fc1": ("ffn", 24, 1),
    }
    # the residual add ties the stem, the block's second conv and every consumer
    assert slices(deps, "stem") >= {
        ("stem.weight", 0),
        ("bn.running_var", 0),
        ("block.c1.weight", 1),
        ("block.c2.weight", 0),
        ("block.b2.weight", 0),
        ("down.weight", 1),
    }
    # a depthwise conv passes channels through to the classifier head
    assert slices(deps, "down") == {
        ("down.weight", 0),
        ("down.bias", 0),
        ("dw.weight", 0),
        ("dw.bias", 0),
        ("fc1.weight", 1),
    }
    # the classifier's outputs are the model's
    assert deps.group("fc2").fixed == ["model output"]


def test_resnet_style_cnn_matches_torch_pruning():
    model, ir = cnn_ir()
    deps = ir.analysis(ChannelDependencies)
    assert our_clusters(model, deps) == oracle_clusters(model, torch.randn(2, 1, 8, 8))


def test_bert_layer_groups_match_torch_pruning():
    model, ir = bert_ir()
    deps = ir.analysis(ChannelDependencies)
    layer = "m.encoder.layer.0"
    assert prunable(deps) == {
        f"{layer}.attention.self": ("heads", 4, 16),
        f"{layer}.intermediate.dense": ("ffn", 128, 1),
    }
    assert slices(deps, f"{layer}.attention.self") == {
        (f"{layer}.attention.self.{p}.{w}", 0)
        for p in ("query", "key", "value")
        for w in ("weight", "bias")
    } | {(f"{layer}.attention.output.dense.weight", 1)}
    hidden = next(g for g in deps.groups if g.kind == "hidden")
    assert hidden.fixed == ["model output"]
    assert our_clusters(model, deps) == oracle_clusters(model, torch.randint(0, 100, (2, 8)))


def test_gpt2_block_groups_with_transposed_conv1d_and_fused_qkv():
    """GPT-2's Conv1D keeps weights as (in, out) and splits one fused QKV projection."""
    _, ir = gpt2_ir()
    deps = ir.analysis(ChannelDependencies)
    assert prunable(deps) == {
        "m.h.0.attn.c_attn": ("heads", 4, 16),
        "m.h.0.mlp.c_fc": ("ffn", 256, 1),
    }
    assert slices(deps, "m.h.0.attn.c_attn") == {
        ("m.h.0.attn.c_attn.weight", 1),
        ("m.h.0.attn.c_attn.bias", 0),
        ("m.h.0.attn.c_proj.weight", 0),
    }
    assert slices(deps, "m.h.0.mlp.c_fc") == {
        ("m.h.0.mlp.c_fc.weight", 1),
        ("m.h.0.mlp.c_fc.bias", 0),
        ("m.h.0.mlp.c_proj.weight", 0),
    }
    # removing head h of q must remove head h of k and v: one heads space, three slices of
    # the fused projection, laid side by side
    bias = next(d for d in deps.spaces.of_dim if d.attr == "m.h.0.attn.c_attn.bias")
    space = deps.spaces.space(bias)
    assert space.definition[0] == "concat" and len(space.definition[1]) == 3


def test_vit_block_groups_match_torch_pruning():
    model, ir = vit_ir()
    deps = ir.analysis(ChannelDependencies)
    assert prunable(deps) == {
        "m.layers.0.attention": ("heads", 4, 16),
        "m.layers.0.mlp.fc1": ("ffn", 128, 1),
    }
    hidden = next(g for g in deps.groups if g.kind == "hidden")
    # the class token and position embeddings are parameters, not modules: sliced too
    assert {("m.embeddings.cls_token", 2), ("m.embeddings.position_embeddings", 2)} <= {
        (s.attr, s.axis) for s in hidden.slices
    }
    assert our_clusters(model, deps) == oracle_clusters(model, torch.randn(2, 3, 32, 32))
