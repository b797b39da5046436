"""Hidden-state distillation: taps read the same states as the original model's modules."""

from __future__ import annotations

import pytest
import torch

from fxopt.engine.errors import RecipeError
from fxopt.passes.finetune import FinetuneConfig
from fxopt.passes.finetune.hidden import TAP_PREFIX, HiddenStates, StateCache, matched_modules
from tests.passes.finetune_support import bert_recipe, cosine_to_teacher, damage, prepare

LAYERS = ["model.encoder.layer.*"]
#: a pattern no module of the BERT matches
UNMATCHED = {"distill": {"hidden_layers": ["encoder.block.*"]}}


def taps(ir, ctx, patterns=("model.encoder.layer.*",)):
    names = matched_modules(ctx.reference_module, list(patterns), file="r.toml", field="f")
    return HiddenStates(ir, ctx.reference_module, names, 1.0, file="r.toml", field="f")


def test_patterns_keep_the_outermost_modules_they_match(tmp_path, tiny_bert_dir):
    _, ctx, _ = prepare(bert_recipe(tmp_path, tiny_bert_dir))
    names = matched_modules(
        ctx.reference_module, ["model.encoder.layer.*"], file="r.toml", field="f"
    )
    assert names == ["model.encoder.layer.0", "model.encoder.layer.1"]


def test_taps_see_the_original_states_until_the_weights_change(tmp_path, tiny_bert_dir):
    ir, ctx, _ = prepare(bert_recipe(tmp_path, tiny_bert_dir))
    code = ir.module.code
    hidden = taps(ir, ctx)
    batch = ctx.batches("verification")[0]
    ir.run(batch)
    assert float(hidden.loss(batch)) < 1e-10
    teacher = hidden.teacher(batch)
    assert [tuple(t.shape) for t in teacher] == [(8, 32, 32)] * 2
    damage(ir)
    ir.run(batch)
    assert float(hidden.loss(batch)) > 1e-3
    hidden.remove()
    assert ir.module.code == code
    assert not any(name.startswith(TAP_PREFIX) for name, _ in ir.module.named_children())


def test_hidden_state_distillation_trains_and_leaves_no_trace(tmp_path, tiny_bert_dir):
    recipe = bert_recipe(
        tmp_path, tiny_bert_dir, {"distill": {"hidden_layers": LAYERS, "hidden": 2.0}}
    )
    ir, ctx, finetune = prepare(recipe)
    code = ir.module.code
    damage(ir)
    before = cosine_to_teacher(ir, ctx)
    metrics = finetune.run(ir, ctx).metrics
    after = cosine_to_teacher(ir, ctx)
    assert metrics["hidden_layers"] == ["model.encoder.layer.0", "model.encoder.layer.1"]
    assert 1 - after < 0.5 * (1 - before), (before, after)
    assert ir.module.code == code


def test_a_pattern_matching_no_module_names_the_field(tmp_path, tiny_bert_dir):
    recipe = bert_recipe(tmp_path, tiny_bert_dir, UNMATCHED)
    ir, ctx, finetune = prepare(recipe)
    with pytest.raises(RecipeError) as caught:
        finetune.run(ir, ctx)
    message = str(caught.value)
    assert "'encoder.block.*' matches no module" in message
    assert "passes[0].config.distill.hidden_layers[0]" in message
    assert "model.encoder" in message  # the fix shows real names


def test_hidden_layers_need_the_distill_objective():
    with pytest.raises(ValueError, match="needs objective = 'distill'"):
        FinetuneConfig.model_validate({"distill": {"hidden_layers": ["*"]}})


def test_a_state_whose_width_changed_is_refused(tmp_path, tiny_bert_dir):
    ir, ctx, _ = prepare(bert_recipe(tmp_path, tiny_bert_dir))
    hidden = taps(ir, ctx)
    batch = ctx.batches("verification")[0]
    ir.run(batch)
    hidden.taps[0].value = torch.zeros(8, 32, 16)
    with pytest.raises(RecipeError, match="is \\(8, 32, 16\\) in the graph being fine-tuned"):
        hidden.loss(batch)
    hidden.remove()


def test_cli_refuses_an_unmatched_pattern_cleanly(tmp_path, tiny_bert_dir, capsys):
    from tests.cli import assert_clean_failure, run_cli

    recipe = bert_recipe(tmp_path, tiny_bert_dir, UNMATCHED)
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, "-o", out)
    assert_clean_failure(
        result,
        2,
        "passes[0].config.distill.hidden_layers[0]",
        "'encoder.block.*' matches no module of the original model",
        "model.encoder",
    )
    assert not out.exists()


def test_validate_refuses_hidden_layers_without_distillation(tmp_path, tiny_bert_dir, capsys):
    from tests.cli import assert_clean_failure, run_cli

    config = {"objective": "task", "distill": {"hidden_layers": ["*"]}}
    recipe = bert_recipe(tmp_path, tiny_bert_dir, config)
    result = run_cli(capsys, "validate", recipe)
    assert_clean_failure(result, 2, "passes[0].config", "needs objective = 'distill'")


def test_teacher_states_are_kept_per_sample_and_reassembled(tmp_path, tiny_bert_dir):
    """Later epochs read the teacher's states from memory: the same samples in another
    order (another batch) get the same states at their real tokens, without a forward."""
    ir, ctx, _ = prepare(bert_recipe(tmp_path, tiny_bert_dir))
    hidden = taps(ir, ctx)
    forwards = []
    ctx.reference_module.register_forward_hook(lambda *_: forwards.append(1))
    batch = ctx.batches("verification")[0]
    first = hidden.teacher(batch, indices=list(range(100, 108)))
    order = [5, 2, 7, 0, 1, 6, 3, 4]
    again = {k: v[order] for k, v in batch.items()}
    second = hidden.teacher(again, indices=[100 + i for i in order])
    assert len(forwards) == 1
    mask = again["attention_mask"].bool()
    assert mask.sum() < mask.numel()  # padding exists, and only real tokens are compared
    for a, b in zip(first, second, strict=True):
        want, got = a[order][mask], b[mask]
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
        assert float(b[~mask].abs().max()) == 0.0
    hidden.cache = StateCache(budget=0)  # nothing fits: every batch runs the teacher
    hidden.teacher(batch, indices=list(range(8)))
    hidden.teacher(again, indices=order)
    assert len(forwards) == 3
    hidden.remove()
