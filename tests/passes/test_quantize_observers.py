"""Observers and threshold searches against scales worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fxopt.engine import hookimpl
from fxopt.engine.errors import PluginError
from fxopt.engine.plugin_host import load_plugins
from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.passes.quantize.observers import BUILTIN_OBSERVERS, ObserverOptions
from fxopt.passes.quantize.thresholds import (
    entropy_threshold,
    mse_threshold,
    percentile_threshold,
)
from tests.passes.quantize_support import TwoBranch, context, make_ir

INT8_SYM = {
    "dtype": torch.int8,
    "quant_min": -127,
    "quant_max": 127,
    "qscheme": torch.per_tensor_symmetric,
}


def observer(kind: str, percentile: float = 99.99, **kwargs):
    """Build an observer the way pt2e's prepare does: factory, then the spec's kwargs."""
    ctor = BUILTIN_OBSERVERS[kind](ObserverOptions(percentile=percentile))
    return ctor.with_args(**INT8_SYM, **kwargs)()


def scale_of(obs, *tensors: torch.Tensor) -> tuple[float, int]:
    for t in tensors:
        obs(t)
    scale, zero_point = obs.calculate_qparams()
    return float(scale.flatten()[0]), int(zero_point.flatten()[0])


# -- the pure searches, on histograms small enough to do by hand ----------------------------


def test_percentile_threshold_by_hand():
    # 10 values: 5 in [1, 2), 3 in [2, 3), 2 in [3, 4); the 80th percentile lies in bin 2
    assert percentile_threshold(np.array([0, 5, 3, 2.0]), np.arange(5.0), 80) == 3.0
    assert percentile_threshold(np.array([0, 5, 3, 2.0]), np.arange(5.0), 50) == 2.0


def test_mse_threshold_by_hand():
    # 10 values at 0.5 and one at 3.5, one quantization level (q(x) = min(round(x/t), 1) * t):
    # t=1: 10*0.5^2 + (3.5-1)^2 = 8.75; t=2: 2.5 + 1.5^2 = 4.75; t=3: 2.5 + 0.5^2 = 2.75;
    # t=4: 2.5 + 0.5^2 = 2.75 -> the smaller of the tied thresholds, 3
    assert mse_threshold(np.array([10, 0, 0, 1.0]), np.arange(5.0), levels=1) == 3.0


def test_entropy_threshold_by_hand():
    # bins [4, 2, 3, 1] -> bin 0 takes bin 1's count: [2, 2, 3, 1] (N = 8); two levels.
    # i=2: P = [2, 2+3+1]/8, Q = [2, 2]/4:     KL = .25 ln(.25/.5) + .75 ln(.75/.5) = 0.1308
    # i=3: P = [2, 2, 3+1]/8, Q = [2, 2, 3]/7: KL = .5 ln(.25/(2/7)) + .5 ln(.5/(3/7)) = 0.0103
    # i=4: P = [2, 2, 3, 1]/8, Q = [2, 2, 2, 2]/8: KL = .375 ln(1.5) + .125 ln(.5) = 0.0654
    # -> i = 3, threshold edges[3] = 3 (the top bin is clipped)
    assert entropy_threshold(np.array([4, 2, 3, 1.0]), np.arange(5.0), levels=2, start=2) == 3.0
    # a last bin that the cut leaves empty while P folds mass into it has KL = inf: with
    # [4, 2, 0, 1] only i=2 (0.0201) and i=4 (Q == P, KL = 0) are finite -> edges[4]
    assert entropy_threshold(np.array([4, 2, 0, 1.0]), np.arange(5.0), levels=2, start=2) == 4.0


def _entropy_reference(hist, edges, levels=128, start=128):
    """The published algorithm, transcribed loop by loop (pytorch-quantization's)."""
    bins = np.array(hist, dtype=np.float64)
    bins[0] = bins[1]
    best, best_i = np.inf, None
    for i in range(start, len(bins) + 1):
        space = np.linspace(0, i, num=levels + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        counts = np.zeros(levels)
        for idx, d in enumerate(digitized):
            if d != -1:
                counts[d] += bins[idx]
        for d in set(digitized):
            if d != -1:
                counts[d] /= np.sum(digitized == d)
        new = np.array([counts[d] if d != -1 else 0.0 for d in digitized])
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        p, q = ref / ref.sum(), new / new.sum()
        mask = p > 0
        kl = np.inf if np.any(q[mask] == 0) else np.sum(p[mask] * np.log(p[mask] / q[mask]))
        if kl <= best:
            best, best_i = kl, i
    return edges[best_i]


def test_entropy_threshold_matches_the_published_algorithm():
    rng = np.random.default_rng(0)
    values = np.abs(np.concatenate([rng.standard_t(3, 20000), [40.0]]))
    hist, edges = np.histogram(values, bins=512, range=(0, values.max()))
    got = entropy_threshold(hist, edges, levels=32, start=32)
    assert got == pytest.approx(_entropy_reference(hist, edges, levels=32, start=32))
    assert got < values.max() / 2  # the lone 40 is clipped


# -- the observers ----------------------------------------------------------------------------


def test_minmax_scale_is_amax_over_127():
    scale, zero_point = scale_of(observer("minmax"), torch.tensor([-2.0, 0.5, 1.27]))
    assert scale == pytest.approx(2.0 / 127) and zero_point == 0


def test_percentile_scale_by_hand():
    # 1..1000 in 1000 unit bins: the 99th percentile (990) lies in bin [990, 991)
    obs = observer("percentile", percentile=99.0, bins=1000)
    scale, _ = scale_of(obs, torch.arange(1, 1001, dtype=torch.float32))
    assert scale == pytest.approx(991.0 / 127)


def test_percentile_keeps_its_threshold_across_batches():
    # the histogram is re-binned when a later batch raises the range: same answer as one batch
    values = torch.arange(1, 1001, dtype=torch.float32)
    one = scale_of(observer("percentile", percentile=99.0), values)[0]
    two = scale_of(observer("percentile", percentile=99.0), values[:500], values[500:])[0]
    assert two == pytest.approx(one, rel=2e-3)


def test_mse_scale_matches_a_brute_force_search():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50000, generator=gen), torch.tensor([12.0, -9.0])])
    scale, _ = scale_of(observer("mse"), x)

    def error(t: float) -> float:
        step = t / 127
        return float(((x - torch.clamp(torch.round(x / step), -127, 127) * step) ** 2).sum())

    grid = np.linspace(0.5, 12.0, 400)
    best = grid[int(np.argmin([error(t) for t in grid]))]
    assert scale * 127 == pytest.approx(best, rel=0.05)
    assert error(scale * 127) <= 1.02 * error(best)


def test_entropy_does_not_clip_uniform_data():
    x = torch.linspace(-1.0, 1.0, 4097)
    scale, _ = scale_of(observer("entropy"), x)
    assert scale == pytest.approx(1.0 / 127, rel=1e-3)


def test_uint8_range_keeps_the_observed_minimum():
    # one-sided data: an affine uint8 range is [min, t], not [-t, t]
    ctor = BUILTIN_OBSERVERS["percentile"](ObserverOptions(percentile=100.0))
    obs = ctor.with_args(
        dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine
    )()
    scale, zero_point = scale_of(obs, torch.linspace(-0.2, 3.0, 1001))
    assert scale == pytest.approx(3.2 / 255, rel=2e-3)
    assert zero_point == round(0.2 / scale)


# -- the plugin hook --------------------------------------------------------------------------


class HalfScale:
    """A third-party plugin: ``test.half`` always answers scale 0.5."""

    @hookimpl
    def fxopt_register_observers(self, registry):
        from torchao.quantization.pt2e.observer import MinMaxObserver

        class Fixed(MinMaxObserver):
            def calculate_qparams(self):
                return torch.tensor([0.5]), torch.tensor([0], dtype=torch.int32)

        registry.register("test.half", lambda options: Fixed)


def test_a_plugin_observer_is_used_by_name(tmp_path):
    host = load_plugins()
    host.register(HalfScale(), name="half-scale")
    assert {"minmax", "percentile", "entropy", "mse", "test.half"} <= set(host.observers.names())
    ir = make_ir(TwoBranch())
    ctx = replace(context(ir, tmp_path), plugins=host)
    QuantizeInt8(Int8Config(observer="test.half")).run(ir, ctx)
    scales = {
        n.args[1]
        for n in ir.graph.nodes
        if str(n.target).startswith("quantized_decomposed.quantize_per_tensor")
    }
    assert scales == {0.5}
    host.unregister("half-scale")
    assert "test.half" not in host.observers


def test_an_observer_name_registered_twice_is_refused():
    class Clash:
        @hookimpl
        def fxopt_register_observers(self, registry):
            registry.register("minmax", BUILTIN_OBSERVERS["minmax"])

    host = load_plugins()
    with pytest.raises(PluginError, match="observer 'minmax' is registered twice"):
        host.register(Clash(), name="clash")
