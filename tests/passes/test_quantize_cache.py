"""The calibration cache: reused on a rerun, rebuilt (with a warning) when stale, corrupt or
damaged (its file no longer matches its seal), and neither read nor written without a cache."""

from __future__ import annotations

import json

import torch

from fxopt.passes.quantize import Int8Config, QuantizeInt8
from fxopt.store.entries import seal
from tests.passes.quantize_support import (
    Collecting,
    Planted,
    TwoBranch,
    batches,
    context,
    make_ir,
)

CONFIG = {"observer": "percentile", "outlier_split": True}


def quantize(tmp_path, module=None, output=None, calibration=None, **config):
    ir = make_ir(module or Planted())
    ctx = context(ir, tmp_path, calibration=calibration, output=output)
    result = QuantizeInt8(Int8Config(**{**CONFIG, **config})).run(ir, ctx)
    return ir, result


def entry(tmp_path):
    [scales] = (tmp_path / "calibration").glob("*/scales.json")
    return scales


def outputs(ir):
    with torch.no_grad():
        return ir.module(batches(seed=5)[0]["x"])[0]


def test_rerun_hits_the_cache_and_builds_the_same_graph(tmp_path):
    first, miss = quantize(tmp_path)
    assert miss.metrics["calibration"]["cache"] == "miss"
    stored = json.loads(entry(tmp_path).read_text())
    assert {s["node"] for s in stored["scales"]} == set(stored["layers"]) and stored["outliers"]
    second, hit = quantize(tmp_path)
    assert hit.metrics["calibration"]["cache"] == "hit"
    assert hit.metrics["calibration"]["key"] == miss.metrics["calibration"]["key"]
    assert hit.metrics["outlier_channels"] == miss.metrics["outlier_channels"] == {"fc2": [0]}
    assert torch.equal(outputs(first), outputs(second))


def test_other_data_or_config_is_a_new_entry(tmp_path):
    _, first = quantize(tmp_path)
    _, other_data = quantize(tmp_path, calibration=batches(seed=11))
    _, other_config = quantize(tmp_path, observer="minmax")
    keys = {r.metrics["calibration"]["key"] for r in (first, other_data, other_config)}
    assert len(keys) == 3
    assert other_data.metrics["calibration"]["cache"] == "miss"
    assert len(list((tmp_path / "calibration").glob("*/scales.json"))) == 3


def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path):
    first, _ = quantize(tmp_path)
    entry(tmp_path).write_text('{"format": 1, "scales": [{"node": ')
    seal(entry(tmp_path).parent)  # corrupt as written, not damaged later: the parse must catch it
    output = Collecting()
    second, result = quantize(tmp_path, output=output)
    assert result.metrics["calibration"]["cache"] == "miss"
    assert any(w.startswith("corrupt calibration cache") for w in output.warnings)
    assert json.loads(entry(tmp_path).read_text())["format"] == 1  # rewritten
    assert torch.equal(outputs(first), outputs(second))


def test_damaged_entry_that_is_still_valid_json_is_never_reused(tmp_path):
    first, _ = quantize(tmp_path)
    data = json.loads(entry(tmp_path).read_text())
    for scale in data["scales"]:
        scale["scale"] *= 1000.0  # plausible, parseable, and wrong
    entry(tmp_path).write_text(json.dumps(data))
    output = Collecting()
    second, result = quantize(tmp_path, output=output)
    assert result.metrics["calibration"]["cache"] == "miss"
    assert any(
        w.startswith("damaged calibration cache") and "does not match its recorded sha256" in w
        for w in output.warnings
    )
    assert torch.equal(outputs(first), outputs(second))
    _, third = quantize(tmp_path)  # the rebuilt entry is sealed again and reused
    assert third.metrics["calibration"]["cache"] == "hit"


def test_stale_entry_is_rebuilt_with_a_warning(tmp_path):
    quantize(tmp_path, module=TwoBranch())
    data = json.loads(entry(tmp_path).read_text())
    data["layers"] = {"linear_99": "gone"}
    entry(tmp_path).write_text(json.dumps(data))
    seal(entry(tmp_path).parent)  # stale as written by an older fxopt, not damaged
    output = Collecting()
    _, result = quantize(tmp_path, module=TwoBranch(), output=output)
    assert result.metrics["calibration"]["cache"] == "miss"
    assert any("stale calibration cache" in w and "linear_99" in w for w in output.warnings)

    data = json.loads(entry(tmp_path).read_text())
    data["format"] = 0
    entry(tmp_path).write_text(json.dumps(data))
    seal(entry(tmp_path).parent)
    output = Collecting()
    quantize(tmp_path, module=TwoBranch(), output=output)
    assert any("stale calibration cache" in w and "format 0" in w for w in output.warnings)


def test_cache_off_writes_nothing(tmp_path):
    _, result = quantize(tmp_path, cache=False)
    assert result.metrics["calibration"]["cache"] == "off"
    assert not (tmp_path / "calibration").exists()


def test_a_run_without_a_cache_neither_reads_nor_writes_one(tmp_path, monkeypatch):
    quantize(tmp_path)  # an entry exists
    ir = make_ir(Planted())
    ctx = context(ir, tmp_path)
    monkeypatch.setattr(ctx, "cache_dir", None)  # what --no-cache gives every pass
    before = sorted(p.name for p in (tmp_path / "calibration").iterdir())
    result = QuantizeInt8(Int8Config(**CONFIG)).run(ir, ctx)
    assert result.metrics["calibration"]["cache"] == "off"
    assert sorted(p.name for p in (tmp_path / "calibration").iterdir()) == before
