"""``prune.structured``'s configuration, criteria, bad inputs and plugin hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxopt.engine import hookimpl
from fxopt.engine.errors import DataError, RecipeError
from fxopt.engine.specs import InputSpec
from fxopt.passes.prune.config import PruneConfig
from fxopt.passes.prune.hf_config import updated_config
from fxopt.passes.prune.rules_pointwise import Elementwise
from fxopt.passes.prune.structured import StructuredPrune
from fxopt.run.bind import bind
from fxopt.run.recipe import parse_recipe
from tests.passes.prune_models import BATCH, bert_ir, capture_model, cnn_ir, context


class TwoBranches(nn.Module):
    """Two MLPs side by side; ``odd`` puts an op between fc1 and fc2 that only a plugin's
    layer pruner describes."""

    def __init__(self, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, hidden), nn.Linear(hidden, classes)
        self.fc3, self.fc4 = nn.Linear(4, hidden), nn.Linear(hidden, classes)

    def forward(self, x):
        odd = nn.functional.hardshrink(self.fc1(x), 0.01)
        return (self.fc2(odd) + self.fc4(torch.relu(self.fc3(x))),)


def branches_ir(**kwargs):
    torch.manual_seed(0)
    model = TwoBranches(**kwargs).eval()
    spec = InputSpec("x", "float32", ("batch", 4), -1.0, 1.0)
    return model, capture_model(model, spec, {"batch": BATCH})


def run(ir, ctx=None, **config):
    ctx = ctx or context()
    return StructuredPrune(PruneConfig(**config)).run(ir, ctx), ctx


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "input should be greater than 0"),
        (-0.2, "input should be greater than 0"),
        (1, "input should be less than 1"),
        (1.5, "input should be less than 1"),
    ],
)
def test_ratio_outside_zero_one_is_refused_at_bind_time(host, value, message):
    recipe = parse_recipe(
        {"passes": [{"name": "prune.structured", "config": {"heads": 0.25, "ratio": value}}]}
    )
    with pytest.raises(RecipeError) as info:
        bind(recipe, host)
    assert info.value.field == "passes[0].config.ratio"
    assert message in info.value.message


def test_a_kind_set_to_zero_is_left_alone():
    """0 turns one kind off, over `ratio` or as a value of a search space
    ("passes.prune.structured.heads" = [0.0, 0.25])."""
    assert PruneConfig(ratio=0.5, heads=0).ratios() == {"ffn": 0.5, "conv": 0.5}
    _, ir = bert_ir()
    result, _ = run(ir, ffn=0.5, heads=0.0)
    assert result.metrics["pruned"] == {"ffn": "1 groups: 128 -> 64"}  # no "heads" entry
    with pytest.raises(ValueError, match="no ratio given"):
        PruneConfig(ffn=0, heads=0)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        PruneConfig(heads=-0.25)


def test_a_recipe_without_any_ratio_is_refused(host):
    recipe = parse_recipe({"passes": [{"name": "prune.structured", "config": {"round_to": 8}}]})
    with pytest.raises(RecipeError, match="no ratio given: set `ratio`, or one of `ffn`"):
        bind(recipe, host)


def test_ignore_pattern_matching_nothing_names_the_candidates():
    _, ir = cnn_ir()
    with pytest.raises(RecipeError) as info:
        run(ir, conv=0.5, ignore=["stem", "block.c9*"])
    error = info.value
    assert error.field == "config.ignore[1]"
    assert "ignore pattern 'block.c9*' matches no group" in error.message
    assert "stem, block.c1, down, fc1" in error.fix


def test_ratio_that_would_empty_a_group_keeps_one_unit_and_warns():
    _, ir = branches_ir(hidden=2)
    result, ctx = run(ir, ffn=0.9)
    assert result.metrics["pruned"] == {"ffn": "1 groups: 2 -> 1"}
    assert result.metrics["clamped"] == ["fc3"]
    assert ctx.output.warnings == [
        "prune.structured: ratio 0.9 would remove every unit of fc3; keeping 1"
    ]
    assert dict(result.ir.module.named_parameters())["fc3.weight"].shape == (1, 4)


def test_a_coupling_through_an_unknown_op_is_left_alone_and_reported():
    _, ir = branches_ir()
    result, _ = run(ir, ffn=0.5)
    assert result.metrics["left_alone"] == [
        "fc1 (ffn): no layer pruner for aten.hardshrink.default"
    ]
    weights = dict(result.ir.module.named_parameters())
    assert weights["fc1.weight"].shape == (8, 4)  # untouched
    assert weights["fc3.weight"].shape == (4, 4)  # pruned


class HardshrinkPlugin:
    """A third party teaching the analysis an op, through the hook."""

    @hookimpl
    def fxopt_register_layer_pruners(self, registry):
        registry.register("aten.hardshrink.default", Elementwise())


def test_hook_fxopt_register_layer_pruners_makes_the_group_prunable(host):
    host.register(HardshrinkPlugin(), name="test-hardshrink")
    try:
        assert host.layer_pruners.entry("aten.hardshrink.default").origin == "test-hardshrink"
        _, ir = branches_ir()
        result, _ = run(ir, ctx=context(plugins=host), ffn=0.5)
    finally:
        host.unregister("test-hardshrink")
    assert "aten.hardshrink.default" not in host.layer_pruners
    assert result.metrics["left_alone"] == []
    assert dict(result.ir.module.named_parameters())["fc1.weight"].shape == (4, 4)
    (out,) = result.ir.run({"x": torch.randn(5, 4)})
    assert out.shape == (5, 3)


def test_builtin_layer_pruners_register_through_the_hook(host):
    entry = host.layer_pruners.entry("aten.linear.default")
    assert "[builtin-layer-pruners]" in entry.origin
    assert "prune.structured" in host.passes


@pytest.mark.parametrize(
    ("config", "what"),
    [
        ({"criterion": "taylor"}, "criterion 'taylor'"),
        ({"criterion": "activation"}, "criterion 'activation'"),
        ({"reconstruct": True}, "reconstruct = true"),
    ],
)
def test_calibration_data_is_required_by_data_driven_criteria_and_reconstruction(config, what):
    _, ir = branches_ir()
    with pytest.raises(DataError) as info:
        run(ir, ffn=0.5, **config)
    assert info.value.field == "data.calibration"
    assert f"{what} needs the calibration set, and it is empty" in info.value.message
    assert "[data.calibration]" in info.value.fix and info.value.fix.count(", or ") == 1


@pytest.mark.parametrize("labels", [False, True], ids=["output-projection", "cross-entropy"])
def test_taylor_keeps_the_neurons_that_move_the_output(labels):
    """Neurons 0-3 of fc3 have big weights but fc4 ignores them: magnitude keeps some of
    them, Taylor (weight x gradient) drops them all."""
    _, ir = branches_ir()
    with torch.no_grad():
        params = dict(ir.module.named_parameters())
        params["fc3.weight"][:4] *= 50
        params["fc4.weight"][:, :4] = 0
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"x": torch.randn(8, 4, generator=generator)}
        | ({"labels": torch.randint(0, 3, (8,), generator=generator)} if labels else {})
        for _ in range(4)
    ]
    assert kept_neurons(ir, batches, "l1") & {0, 1, 2, 3}  # magnitude keeps useless ones
    assert kept_neurons(ir, batches, "taylor") == {4, 5, 6, 7}


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor, width: int = 1) -> set[int]:
    """Which units (blocks of ``width`` rows) of ``original`` survive in ``pruned``."""
    rows = {int(torch.nonzero((original == row).all(dim=1))[0]) for row in pruned.detach()}
    return {r // width for r in rows}


def kept_neurons(ir, batches: list, criterion: str) -> set[int]:
    """The fc3 neurons a copy of ``ir`` keeps when half are pruned by ``criterion``."""
    _, fresh = branches_ir()
    fresh.module.load_state_dict(ir.module.state_dict())
    result, _ = run(fresh, ctx=context(calibration=batches), ffn=0.5, criterion=criterion)
    pruned = dict(result.ir.module.named_parameters())["fc3.weight"]
    return _kept_rows(dict(ir.module.named_parameters())["fc3.weight"], pruned)


def test_activation_keeps_the_neurons_whose_removal_moves_the_reader_most():
    """Scores by hand: neuron u of fc3 feeds fc4 through relu, so removing it moves fc4's
    output by ``sum_tokens relu(fc3(x))_u^2 * ||fc4.weight[:, u]||^2``. Neurons 0-3 get the
    largest weights into them but fc4 reads them faintly: l2 keeps them, activation not."""
    _, ir = branches_ir()
    params = dict(ir.module.named_parameters())
    with torch.no_grad():
        params["fc3.weight"][:4] *= 4
        params["fc4.weight"][:, :4] *= 0.01
    generator = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(8, 4, generator=generator)} for _ in range(4)]
    with torch.no_grad():
        hidden = torch.cat(
            [
                torch.relu(nn.functional.linear(b["x"], params["fc3.weight"], params["fc3.bias"]))
                for b in batches
            ]
        )
        hand = hidden.pow(2).sum(0) * params["fc4.weight"].pow(2).sum(0)
    best = set(torch.topk(hand, 4).indices.tolist())
    assert kept_neurons(ir, batches, "activation") == best
    assert best.isdisjoint({0, 1, 2, 3})
    assert kept_neurons(ir, batches, "l2") & {0, 1, 2, 3}


def test_activation_scores_a_head_by_what_the_output_projection_reads_from_it():
    """A head is scored as a whole: ``||x_h W_h^T||^2`` over the tokens, with ``x_h`` the
    head's slice of the attention output projection's input (correlations inside it count)."""
    eager, ir = bert_ir(layers=1)
    prefix = "m.encoder.layer.0.attention."
    louder = {prefix + "self.value.weight": (slice(0, 16), 6.0)}  # head 0 loud in the input
    louder[prefix + "output.dense.weight"] = ((slice(None), slice(48, 64)), 0.1)  # 3 faint
    with torch.no_grad():
        for name, (where, factor) in louder.items():
            value = dict(eager.named_parameters())[name].detach().clone()
            value[where] *= factor
            for model in (eager, ir.module):
                dict(model.named_parameters())[name].copy_(value)
    attention = eager.m.encoder.layer[0].attention
    generator = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randint(0, 100, (4, 8), generator=generator)} for _ in range(3)]
    seen = []
    hook = attention.output.dense.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        for batch in batches:
            eager(batch["x"])
    hook.remove()
    x = torch.cat([s.reshape(-1, 64) for s in seen])
    weight = attention.output.dense.weight.detach()
    hand = torch.stack(
        [
            (x[:, h * 16 : (h + 1) * 16] @ weight[:, h * 16 : (h + 1) * 16].T).pow(2).sum()
            for h in range(4)
        ]
    )
    result, _ = run(ir, ctx=context(calibration=batches), heads=0.5, criterion="activation")
    name = "m.encoder.layer.0.attention.self.query.weight"
    pruned = dict(result.ir.module.named_parameters())[name]
    original = dict(eager.named_parameters())[name]
    assert _kept_rows(original, pruned, width=16) == set(torch.topk(hand, 2).indices.tolist())
    assert 0 in set(torch.topk(hand, 2).indices.tolist())
    assert 3 not in set(torch.topk(hand, 2).indices.tolist())


def test_config_sizes_under_the_models_own_keys():
    bert = {"num_attention_heads": 12, "intermediate_size": 1536, "num_hidden_layers": 2}
    new, notes = updated_config(
        bert,
        [
            ("heads", 12, 9, 32),
            ("ffn", 1536, 1076, 1),
            ("heads", 12, 9, 32),
            ("ffn", 1536, 1000, 1),
        ],
    )
    assert new == {
        "num_attention_heads": 9,
        "intermediate_size": [1076, 1000],
        "num_hidden_layers": 2,
        "head_dim": 32,
    }
    assert notes == []
    assert bert["num_attention_heads"] == 12  # the original is not modified
    _, notes = updated_config({"foo": 1}, [("ffn", 8, 4, 1)])
    assert notes == ["config.json has no key for the ffn size; left as it was"]
