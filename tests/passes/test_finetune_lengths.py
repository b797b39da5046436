"""``group_by_length`` (batches of similar length, cut to their longest sequence) and
``freeze`` (parameters the fine-tune leaves alone)."""

from __future__ import annotations

import pytest
import torch

from fxopt.engine import hookimpl
from fxopt.engine.errors import RecipeError
from fxopt.engine.plugin_host import load_plugins
from fxopt.passes.finetune.lengths import grouped, lengths, run_by_length, trim
from tests.passes.finetune_support import bert_recipe, cosine_to_teacher, damage, prepare, weights


def right_padded(sizes: list[int], width: int) -> torch.Tensor:
    return torch.stack([(torch.arange(width) < n).long() for n in sizes])


def test_lengths_are_one_past_the_last_attended_position():
    mask = right_padded([3, 7, 1], 8)
    assert lengths(mask).tolist() == [3, 7, 1]


def test_grouped_batches_hold_similar_lengths_in_a_random_order():
    generator = torch.Generator().manual_seed(0)
    sample_lengths = torch.randint(1, 128, (800,), generator=generator)
    order = torch.randperm(800, generator=generator).tolist()
    got = grouped(order, sample_lengths, 16, seed=1)
    assert sorted(got) == sorted(order)  # a permutation: every sample once

    def spread(indices: list[int]) -> float:
        batches = [indices[i : i + 16] for i in range(0, len(indices), 16)]
        return float(sum(int(sample_lengths[b].max() - sample_lengths[b].min()) for b in batches))

    assert spread(got) < 0.1 * spread(order)
    assert got == grouped(order, sample_lengths, 16, seed=1)  # deterministic
    assert got != grouped(order, sample_lengths, 16, seed=2)  # and the seed reshuffles
    firsts = [int(sample_lengths[got[i]]) for i in range(0, 800, 16)]
    assert firsts != sorted(firsts, reverse=True)  # batch order is not longest-first


def test_trim_cuts_inputs_and_token_states_to_the_longest_row_rounded_up():
    mask = right_padded([3, 10, 5], 32)
    batch = {"input_ids": torch.arange(96).reshape(3, 32), "attention_mask": mask}
    tokens, pooled = torch.randn(3, 32, 4), torch.randn(3, 32)
    cut, teacher = trim(batch, [tokens, pooled])
    assert cut["input_ids"].shape == (3, 16) and cut["attention_mask"].shape == (3, 16)
    assert torch.equal(cut["input_ids"], batch["input_ids"][:, :16])
    assert teacher[0].shape == (3, 16, 4)
    assert teacher[1] is pooled  # [batch, features] is never cut, even 32 wide


def test_trim_leaves_left_padding_and_full_batches_alone():
    left = torch.flip(right_padded([3, 5], 16), dims=[1])
    batch = {"input_ids": torch.ones(2, 16, dtype=torch.long), "attention_mask": left}
    assert trim(batch, None)[0]["input_ids"].shape == (2, 16)
    assert trim({"x": torch.ones(2, 16)}, None)[0]["x"].shape == (2, 16)


def test_run_by_length_gives_what_full_width_batches_give_in_sample_order():
    """Teacher outputs computed on sorted, cut batches: token outputs padded back, pooled
    ones as they are, every sample where it was."""
    generator = torch.Generator().manual_seed(0)
    mask = right_padded(torch.randint(1, 24, (20,), generator=generator).tolist(), 32)
    tensors = {
        "input_ids": torch.randint(1, 50, (20, 32), generator=generator),
        "attention_mask": mask,
    }
    table = torch.randn(50, 4, generator=generator)
    widths = []

    def model(batch):
        widths.append(batch["input_ids"].shape[1])
        tokens = table[batch["input_ids"]] * batch["attention_mask"].unsqueeze(-1)
        return [tokens, tokens.sum(1)]

    tokens, pooled = run_by_length(model, tensors, batch=8)
    want_tokens, want_pooled = model(tensors)
    assert torch.equal(tokens, want_tokens)
    assert torch.allclose(pooled, want_pooled)
    assert max(widths[:-1]) < 32  # the sorted batches were cut


class BatchWidths:
    def __init__(self) -> None:
        self.widths: list[int] = []

    @hookimpl
    def fxopt_train_step_begin(self, step, epoch, batch, model):
        self.widths.append(batch["input_ids"].shape[1])


def test_grouped_distillation_trains_on_shorter_batches(tmp_path, tiny_bert_dir):
    host = load_plugins()
    seen = BatchWidths()
    host.pm.register(seen)
    recipe = bert_recipe(tmp_path, tiny_bert_dir, {"group_by_length": True})
    ir, ctx, finetune = prepare(recipe, host)
    damage(ir)
    before = cosine_to_teacher(ir, ctx)
    metrics = finetune.run(ir, ctx).metrics
    after = cosine_to_teacher(ir, ctx)
    assert 1 - after < 0.5 * (1 - before), (before, after)
    assert metrics["steps"] == 32
    assert len(seen.widths) == 32 and max(seen.widths) <= 32
    assert sum(seen.widths) < 0.8 * 32 * 32, seen.widths  # most batches were cut


def test_frozen_parameters_do_not_move(tmp_path, tiny_bert_dir):
    recipe = bert_recipe(tmp_path, tiny_bert_dir, {"freeze": ["model.embeddings.*"]})
    ir, ctx, finetune = prepare(recipe)
    damage(ir)
    start = weights(ir.module)
    finetune.run(ir, ctx)
    end = weights(ir.module)
    moved = {name for name in start if not torch.equal(start[name], end[name])}
    assert moved and not any(name.startswith("model.embeddings.") for name in moved)
    assert any(name.startswith("model.encoder.") for name in moved)


@pytest.mark.parametrize(
    ("freeze", "field", "message"),
    [
        (["model.decoder.*"], "passes[0].config.freeze[0]", "matches no trained parameter"),
        (["*"], "passes[0].config.freeze", "freeze leaves no parameter to train"),
    ],
    ids=["nothing", "everything"],
)
def test_freeze_patterns_that_match_nothing_or_everything_are_refused(
    tmp_path, tiny_bert_dir, freeze, field, message
):
    recipe = bert_recipe(tmp_path, tiny_bert_dir, {"freeze": freeze})
    ir, ctx, finetune = prepare(recipe)
    with pytest.raises(RecipeError) as info:
        finetune.run(ir, ctx)
    assert info.value.field == field
    assert message in info.value.message
    assert "fnmatch" in info.value.fix or "fewer" in info.value.fix
