"""Hidden-state distillation: the student also learns the original model's intermediate states.

Distilling a sentence encoder through its pooled embedding gives one vector per sentence to
match; the states of whole layers, token by token, give hundreds, and hold each pruned layer to
what its unpruned self produced (as TinyBERT and MiniLM distil). The recipe names modules of the
original model (``hidden_layers = ["model.encoder.layer.*"]``). The teacher's outputs of those
modules are read with forward hooks on the original model; the student's with a tap inserted
after the last graph node each module produced (the graph keeps the module stack of every
node). The loss is the masked mean squared error relative to the teacher's mean square, so that
layers of different scale weigh alike. The taps leave the graph when training ends.

The teacher's states do not change between epochs, and its forward is about a quarter of a
step (one forward of the full model against the student's forward and backward), so each
sample's states are kept after their first computation, its real tokens only, in float16,
while they fit in :data:`CACHE_BYTES`; later epochs assemble batches from them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import fx

from fxopt.engine.errors import RecipeError
from fxopt.engine.ir import ModelIR

from .lengths import lengths

TAP_PREFIX = "fxopt_hidden_tap_"
#: memory for the teacher's states kept between epochs
CACHE_BYTES = 1 << 30
Batch = dict[str, torch.Tensor]


class StateCache:
    """Per sample: the teacher's state of each module at its real tokens (right padding
    dropped), in float16 where the values fit, until the budget is spent."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self.rows: dict[int, list[torch.Tensor]] = {}

    def get(self, indices: Sequence[int], width: int) -> list[torch.Tensor] | None:
        """The states of a batch of ``width`` positions, zeros where padding; None unless
        every sample is kept."""
        if not indices or any(i not in self.rows for i in indices):
            return None
        first = self.rows[indices[0]]
        out = [torch.zeros(len(indices), width, *t.shape[1:]) for t in first]
        for row, index in enumerate(indices):
            for layer, value in zip(out, self.rows[index], strict=True):
                if len(value) > width:
                    return None
                layer[row, : len(value)] = value.float()
        return out

    def put(self, indices: Sequence[int], states: list[torch.Tensor], sizes: list[int]) -> None:
        if any(t.dim() < 2 or len(t) != len(indices) for t in states):
            return
        for row, (index, length) in enumerate(zip(indices, sizes, strict=True)):
            kept = [_compact(t[row, :length]) for t in states]
            size = sum(t.numel() * t.element_size() for t in kept)
            if self.used + size > self.budget:
                return
            self.rows[index] = kept
            self.used += size


def _compact(value: torch.Tensor) -> torch.Tensor:
    half = value.detach().cpu().to(torch.float16)
    return half if bool(torch.isfinite(half).all()) else value.detach().cpu().clone()


class Tap(torch.nn.Module):
    """Identity that keeps the tensor it saw (with its autograd history)."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.value = x
        return x


def matched_modules(
    reference: torch.nn.Module, patterns: Sequence[str], *, file: str, field: str
) -> list[str]:
    """Module names of ``reference`` the patterns match, outermost only (a match inside
    another match adds nothing)."""
    names = [name for name, _ in reference.named_modules() if name]
    matched: list[str] = []
    for index, pattern in enumerate(patterns):
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            shown = ", ".join(n for n in names if n.count(".") <= 3)[:300]
            raise RecipeError(
                f"hidden_layers pattern {pattern!r} matches no module of the original model",
                file=file,
                field=f"{field}[{index}]",
                fix=f"patterns are fnmatch globs over module names, e.g. {shown}",
            )
        matched.extend(hits)
    unique = list(dict.fromkeys(matched))
    return [n for n in unique if not any(n.startswith(m + ".") for m in unique)]


class HiddenStates:
    """Taps on the student graph and hooks on the teacher, for the same modules."""

    def __init__(
        self,
        ir: ModelIR,
        reference: torch.nn.Module,
        names: Sequence[str],
        weight: float,
        *,
        file: str,
        field: str,
    ) -> None:
        self.module, self.reference, self.names, self.weight = ir.module, reference, names, weight
        self.input_names = ir.input_names
        self.file, self.field = file, field
        last: dict[str, fx.Node] = {}
        for node in ir.graph.nodes:
            for path, _ in (node.meta.get("nn_module_stack") or {}).values():
                if path in names:
                    last[path] = node
        missing = [n for n in names if n not in last]
        if missing:
            raise RecipeError(
                f"module {missing[0]!r} of the original model has no node in the graph being "
                "fine-tuned (an earlier pass removed or merged it)",
                file=file,
                field=field,
                fix="name modules that survive the earlier passes, e.g. whole layers",
            )
        self.taps: list[Tap] = []
        self.nodes: list[fx.Node] = []
        for index, name in enumerate(names):
            tap = Tap()
            self.module.add_submodule(f"{TAP_PREFIX}{index}", tap)
            with ir.graph.inserting_after(last[name]):
                self.nodes.append(ir.graph.call_module(f"{TAP_PREFIX}{index}", (last[name],)))
            self.taps.append(tap)
        self.module.recompile()
        self._teacher: dict[str, torch.Tensor] = {}
        self._hooks = [
            reference.get_submodule(name).register_forward_hook(self._keeper(name))
            for name in names
        ]
        self._last: tuple[Batch, list[torch.Tensor]] | None = None
        self.cache = StateCache()

    def _keeper(self, name: str):
        def keep(module, args, output) -> None:
            self._teacher[name] = output[0] if isinstance(output, (tuple, list)) else output

        return keep

    def teacher(self, batch: Batch, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The original model's states on ``batch`` (computed once per batch object, and
        once per sample when ``indices`` names the samples)."""
        if self._last is not None and self._last[0] is batch:
            return self._last[1]
        device = next(iter(batch.values())).device
        mask = batch.get("attention_mask")
        width = next(iter(batch.values())).shape[1] if mask is None else mask.shape[1]
        states = self.cache.get(indices, width) if indices is not None else None
        if states is None:
            with torch.no_grad():
                self.reference(*(batch[name].cpu() for name in self.input_names))
            states = [self._teacher[name].detach() for name in self.names]
            if indices is not None:
                self.cache.put(indices, states, _lengths(mask, width, len(indices)))
        states = [t.to(device) for t in states]
        self._last = (batch, states)
        return states

    def loss(self, batch: Batch, indices: Sequence[int] | None = None) -> torch.Tensor:
        """Weighted relative MSE of the student's tapped states (from its last forward);
        ``indices``: which fine-tune samples the batch holds, for the teacher's cache."""
        mask = batch.get("attention_mask")
        terms = []
        for name, tap, target in zip(
            self.names, self.taps, self.teacher(batch, indices), strict=True
        ):
            student = tap.value
            if student is None or student.shape != target.shape:
                got = None if student is None else tuple(student.shape)
                raise RecipeError(
                    f"hidden state of {name!r} is {got} in the graph being fine-tuned but "
                    f"{tuple(target.shape)} in the original model",
                    file=self.file,
                    field=self.field,
                    fix="name modules whose output width the earlier passes keep",
                )
            error = (student.float() - target.float()) ** 2
            scale = target.float().pow(2)
            if mask is not None and error.dim() == 3 and mask.shape == error.shape[:2]:
                keep = mask.to(error.dtype).unsqueeze(-1)
                error, scale = error * keep, scale * keep
            terms.append(error.sum() / scale.sum().clamp(min=1e-12))
        return self.weight * torch.stack(terms).mean()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for index, node in enumerate(self.nodes):
            node.replace_all_uses_with(node.args[0])
            self.module.graph.erase_node(node)
            self.module.delete_submodule(f"{TAP_PREFIX}{index}")
        self.module.recompile()
        self.taps, self.nodes, self._teacher, self._last = [], [], {}, None
        self.cache = StateCache()


def _lengths(mask: torch.Tensor | None, width: int, rows: int) -> list[int]:
    """Real tokens per row: up to the last attended position (all, without a mask)."""
    if mask is None or mask.dim() != 2:
        return [width] * rows
    return lengths(mask).tolist()
