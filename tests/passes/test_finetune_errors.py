# ruff: noqa: F811  (pytest fixtures imported from finetune_support)
"""Bad input to ``finetune``: each a clear error naming the file, the field and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from fxopt.engine.errors import DataError, RecipeError
from tests.cli import assert_clean_failure, run_cli
from tests.passes.finetune_support import (  # noqa: F401  (fixtures)
    digits_dir,
    digits_recipe,
    one_thread,
    prepare,
)

ONE_STEP = {"max_steps": 1}


def test_finetune_without_a_training_set_fails_at_bind_time(tmp_path, digits_dir, capsys):
    recipe = digits_recipe(tmp_path, digits_dir, ONE_STEP, data={"finetune": None})
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, "-o", out)
    assert_clean_failure(result, 2, "data.finetune", "needs a finetune set", "[data.finetune]")
    assert not out.exists()


def test_an_empty_training_set_reaching_the_pass_names_the_split(tmp_path, digits_dir):
    """Called outside the CLI (no bind-time check), the pass still says what is missing."""
    ir, ctx, finetune = prepare(digits_recipe(tmp_path, digits_dir, ONE_STEP))
    ctx.batches = lambda split: []
    with pytest.raises(DataError) as info:
        finetune.run(ir, ctx)
    assert info.value.field == "data.finetune"
    assert "finetune needs the finetune set, and it is empty" in info.value.message
    assert "[data.finetune]" in info.value.fix


def test_a_task_loss_without_labels_names_where_labels_come_from(tmp_path, digits_dir, capsys):
    with np.load(digits_dir / "digits.npz") as arrays:
        np.savez(tmp_path / "unlabelled.npz", x=arrays["x"])
    unlabelled = {"path": str(tmp_path / "unlabelled.npz")}
    recipe = digits_recipe(
        tmp_path,
        digits_dir,
        {**ONE_STEP, "objective": "task"},
        data={"finetune": unlabelled, "verification": unlabelled},
    )
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, "-o", out)
    assert_clean_failure(
        result, 2, "data.finetune", "no labels", "label_field", '"labels" array', "distill"
    )
    assert not out.exists()


def test_an_unknown_attack_suggests_the_closest(tmp_path, digits_dir):
    recipe = digits_recipe(tmp_path, digits_dir, {**ONE_STEP, "adversarial": {"method": "pgdd"}})
    ir, ctx, finetune = prepare(recipe)
    with pytest.raises(RecipeError) as error:
        finetune.run(ir, ctx)
    message = str(error.value)
    assert "unknown attack 'pgdd'" in message and "did you mean 'pgd'" in message
    assert "passes[0].config.adversarial.method" in message


@pytest.mark.parametrize("epsilon", [0, -0.1])
def test_epsilon_must_be_positive(tmp_path, digits_dir, capsys, epsilon):
    adversarial = {"method": "pgd", "epsilon": epsilon}
    recipe = digits_recipe(tmp_path, digits_dir, {**ONE_STEP, "adversarial": adversarial})
    result = run_cli(capsys, "validate", recipe)
    assert_clean_failure(
        result, 2, "passes[0].config.adversarial.epsilon", "greater than 0", f"got {epsilon}"
    )


def test_a_world_size_the_data_cannot_be_split_into(tmp_path, digits_dir, monkeypatch):
    recipe = digits_recipe(tmp_path, digits_dir, ONE_STEP, samples=500, batch_size=50)
    ir, ctx, finetune = prepare(recipe)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DataError) as error:
        finetune.run(ir, ctx)
    message = str(error.value)
    assert "500 fine-tune samples in global batches of 50" in message
    assert "cannot be split evenly over 3 processes" in message
    assert "multiples of 3" in message and "data.finetune" in message


def test_fp16_autocast_on_cpu_is_refused(tmp_path, digits_dir):
    recipe = digits_recipe(tmp_path, digits_dir, {**ONE_STEP, "amp": "fp16", "device": "cpu"})
    ir, ctx, finetune = prepare(recipe)
    with pytest.raises(RecipeError, match="fp16 autocast needs a CUDA device"):
        finetune.run(ir, ctx)


def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path, digits_dir):
    pytest.importorskip("numpy")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    recipe = digits_recipe(tmp_path, digits_dir, {**ONE_STEP, "tensorboard_dir": "tb"})
    ir, ctx, finetune = prepare(recipe)
    with pytest.raises(RecipeError, match=r"pip install 'fxopt\[tensorboard\]'"):
        finetune.run(ir, ctx)
