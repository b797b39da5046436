"""The recipe's data splits, loaded disjoint: splits that read the same source and file take
consecutive slices of it (calibration first, then fine-tune, then verification), and the keys
of all splits are checked for overlap, so a model is never verified on the data it was
calibrated or trained on. Their values are checked before anything runs on them.
"""

from __future__ import annotations

from collections.abc import Callable

from fxopt.engine.data import Batch, DataContext, Sample, batches
from fxopt.engine.errors import DataError
from fxopt.engine.registry import Registry

from .data_shapes import check_data_values
from .recipe import Recipe


def build_splits(
    recipe: Recipe, datasets: Registry, make_ctx: Callable[[str], DataContext]
) -> dict[str, list[Batch]]:
    """Load every split the recipe declares, disjoint, batched, by its key
    (:meth:`~.recipe.DataSection.splits`: a named verification set as ``verification.<name>``)."""
    offsets: dict[tuple[str, str | None], int] = {}
    samples: dict[str, list[Sample]] = {}
    contexts: dict[str, DataContext] = {}
    declared = recipe.data.splits()
    for name, split in declared.items():
        where = recipe.data.field(name)
        source = datasets.get(split.source, file=recipe.label, field=f"{where}.source")()
        if split.batch_size > split.samples:
            raise DataError(
                f"batch_size ({split.batch_size}) is larger than samples ({split.samples})",
                file=recipe.label,
                field=f"{where}.batch_size",
                fix="lower batch_size or raise samples",
            )
        # one record list per source and file: splits take consecutive, disjoint slices
        # (sources that generate data per split, like synthetic, ignore the offset)
        group = (split.source, split.path)
        offset = offsets.get(group, 0)
        contexts[name] = ctx = make_ctx(name)
        got = source.samples(split, ctx, offset=offset, count=split.samples)
        if len(got) < split.samples:
            shared = f" after the {offset} used by earlier splits" if offset else ""
            raise DataError(
                f"only {len(got)} samples available{shared}, {split.samples} asked",
                file=recipe.label,
                field=f"{where}.samples",
                fix="lower samples, or give this split more data",
            )
        offsets[group] = offset + split.samples
        samples[name] = got
    _check_disjoint(samples, recipe)
    out = {}
    for name, got in samples.items():
        split = declared[name]
        out[name] = batches(got, split.batch_size)
        ctx = contexts[name]
        file = str(recipe.resolve_path(split.path)) if split.path else recipe.label
        where = recipe.data.field(name).removeprefix("data.")
        check_data_values(ctx.inputs, out[name], split=where, file=file, tokenized=ctx.tokenized)
    return out


def _check_disjoint(samples: dict[str, list[Sample]], recipe: Recipe) -> None:
    names = list(samples)
    for i, first in enumerate(names):
        keys = {s.key for s in samples[first]}
        for second in names[i + 1 :]:
            shared = keys & {s.key for s in samples[second]}
            if shared:
                a, b = (recipe.data.field(n).removeprefix("data.") for n in (first, second))
                raise DataError(
                    f"{len(shared)} samples appear in both the {a} and the {b} set",
                    file=recipe.label,
                    field=recipe.data.field(second),
                    fix="use different files, or remove the duplicated records",
                )
