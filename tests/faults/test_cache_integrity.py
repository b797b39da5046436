"""A cache answer is never trusted unverified: damaged entries are rebuilt, ``--no-cache``
means no cache at all, and the cache directory itself is handled with care."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fxopt.engine.errors import EXIT_USAGE
from fxopt.run import pass_cache
from fxopt.store.root import MARKER, CacheRoot, locate, parse_size
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import COUNTING, TINY_RECIPE, write_recipe
from tests.entry_points import with_entry_points
from tests.fixtures.plugins import counting


@pytest.fixture
def recipe(tmp_path) -> Path:
    return write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))


def build(capsys, *args):
    """Run, and return the report (``--json``) and what a person would have read (a second
    run's messages are not needed: warnings are printed without ``--json`` only)."""
    result = run_cli(capsys, *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def build_and_read(capsys, *args) -> tuple[dict, str]:
    """Run as a person would (messages on stderr); return the written report and them."""
    result = run_cli(capsys, *args)
    assert result.code == 0, result.err
    out = Path(str(args[args.index("-o") + 1]))
    return json.loads((out / "report.json").read_text()), " ".join(result.err.split())


def flip_a_bit(path: Path, offset: int | None = None) -> None:
    """Change one bit in place, keeping the file's size and modification time."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_a_flipped_bit_in_a_cached_pass_result_is_recomputed_not_shipped(
    capsys, monkeypatch, tmp_path, cache_dir, tiny_bert_dir
):
    monkeypatch.setattr(pass_cache, "MIN_SECONDS", 0.0)
    with_entry_points(monkeypatch, counting="tests.fixtures.plugins.counting")
    counting.RUNS.clear()
    body = TINY_RECIPE.format(backend="onnxruntime") + COUNTING
    recipe = write_recipe(tmp_path, body.format(max_bytes=1000000))
    build(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "a")
    assert counting.RUNS == ["thirdparty.count"]
    (entry,) = (
        e
        for e in (cache_dir / "passes").iterdir()
        if json.loads((e / "state.json").read_text())["records"][-1]["name"] == "thirdparty.count"
    )
    weights = max(entry.rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    flip_a_bit(weights)

    recipe.write_text(body.format(max_bytes=2000000))  # the last pass changes, not the count
    report, err = build_and_read(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "b")
    assert counting.RUNS == ["thirdparty.count"] * 2  # recomputed
    assert f"pass cache entry {entry} is damaged" in err and "recomputing" in err
    assert "cached" not in report["passes"][-1]["metrics"]
    assert report["verify"]["metrics"]["cosine_mean"] > 0.9999


def test_a_damaged_cached_output_is_rebuilt(capsys, tmp_path, cache_dir, recipe, tiny_bert_dir):
    out = tmp_path / "out"
    build(capsys, recipe, tiny_bert_dir, "-o", out)
    (entry,) = (cache_dir / "outputs").iterdir()
    flip_a_bit(entry / "model.onnx")
    for path in out.iterdir():
        path.unlink()
    out.rmdir()
    report, err = build_and_read(capsys, recipe, tiny_bert_dir, "-o", out)
    assert "restored" not in err and report["passed"]
    assert f"cache entry {entry} is damaged (model.onnx does not match" in err
    assert "rebuilding" in err


def test_a_model_rewritten_with_the_same_size_and_mtime_is_rebuilt(
    capsys, tmp_path, cache_dir, recipe, model_copy
):
    out = tmp_path / "out"
    build(capsys, recipe, model_copy, "-o", out)
    weights = model_copy / "model.safetensors"
    flip_a_bit(weights, offset=weights.stat().st_size - 3)  # inside the last tensor's data
    result = run_cli(capsys, recipe, model_copy, "-o", out, "--json")
    assert_clean_failure(result, EXIT_USAGE, "output directory already exists")  # not up to date
    report = build(capsys, recipe, model_copy, "-o", out, "--force")
    assert "cache" not in report
    manifest = json.loads((out / "manifest.json").read_text())
    recorded = {Path(e["path"]).name: e["sha256"] for e in manifest["model"]}
    import hashlib

    assert recorded["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_verify_inputs_rehashes_every_file(capsys, tmp_path, cache_dir, recipe, model_copy):
    out = tmp_path / "out"
    build(capsys, recipe, model_copy, "-o", out)
    hashes = json.loads((cache_dir / "file-hashes.json").read_text())
    for record in hashes.values():
        record[4] = "0" * 64  # a remembered hash that lies
    (cache_dir / "file-hashes.json").write_text(json.dumps(hashes))
    report = build(capsys, recipe, model_copy, "-o", out, "--verify-inputs")
    assert report["cache"] == "up-to-date"


def test_no_cache_reads_and_writes_no_cache(capsys, tmp_path, cache_dir, recipe, tiny_bert_dir):
    out = tmp_path / "out"
    build(capsys, recipe, tiny_bert_dir, "-o", out)
    (entry,) = (cache_dir / "outputs").iterdir()
    flip_a_bit(entry / "model.onnx")  # a read would warn about it
    before = sorted((str(p), p.stat().st_mtime_ns) for p in cache_dir.rglob("*"))
    report, err = build_and_read(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "b", "--no-cache")
    assert report["passed"] and "damaged" not in err
    assert sorted((str(p), p.stat().st_mtime_ns) for p in cache_dir.rglob("*")) == before


def test_cache_clear_refuses_a_directory_that_is_not_a_cache(capsys, tmp_path):
    mine = tmp_path / "projects"
    for name in ("outputs", "passes", "locks"):
        (mine / name).mkdir(parents=True)
        (mine / name / "important.txt").write_text("mine")
    (mine / "README").write_text("mine")
    result = run_cli(capsys, "cache", "clear", "--cache-dir", mine)
    assert_clean_failure(result, EXIT_USAGE, "refusing to clear", "not an fxopt cache", "README")
    assert all((mine / n / "important.txt").is_file() for n in ("outputs", "passes", "locks"))


def test_cache_dir_that_is_a_file_or_unwritable(capsys, tmp_path, recipe, tiny_bert_dir):
    afile = tmp_path / "cachefile"
    afile.write_text("x")
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out", "--cache-dir", afile)
    assert_clean_failure(result, EXIT_USAGE, "--cache-dir", "is a file", "--no-cache")
    assert not (tmp_path / "out").exists()

    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out", "--cache-dir", readonly)
    assert_clean_failure(result, EXIT_USAGE, "cannot be written")


def test_no_home_directory_needs_none_with_a_cache_dir(capsys, monkeypatch, tmp_path):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert locate(tmp_path / "c").path == tmp_path / "c"
    monkeypatch.setenv("FXOPT_CACHE_DIR", str(tmp_path / "env"))
    assert locate().path == tmp_path / "env"
    monkeypatch.delenv("FXOPT_CACHE_DIR")
    assert locate().path is None and "no home directory" in locate().reason
    result = run_cli(capsys, "cache", "info")
    assert_clean_failure(result, EXIT_USAGE, "no home directory", "FXOPT_CACHE_DIR")


def test_run_without_a_home_builds_without_a_cache(
    capsys, monkeypatch, tmp_path, recipe, tiny_bert_dir
):
    monkeypatch.setattr(Path, "home", staticmethod(lambda: (_ for _ in ()).throw(RuntimeError())))
    monkeypatch.delenv("FXOPT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    report, err = build_and_read(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out")
    assert report["passed"] and "building without a cache: no home directory" in err


def test_size_limit_evicts_least_recently_used(capsys, tmp_path, cache_dir, recipe, tiny_bert_dir):
    for name, cosine in (("a", "0.9999"), ("b", "0.99989")):
        recipe.write_text(TINY_RECIPE.format(backend="onnxruntime").replace("0.9999", cosine))
        build(capsys, recipe, tiny_bert_dir, "-o", tmp_path / name)
    entries = sorted((cache_dir / "outputs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(entries) == 2
    one = sum(p.stat().st_size for p in entries[1].rglob("*") if p.is_file())
    result = run_cli(capsys, "cache", "limit", str(int(one * 1.5)), "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["limit_bytes"] == int(one * 1.5) and info["outputs"] == 1
    assert [p.name for p in (cache_dir / "outputs").iterdir()] == [entries[1].name]
    assert json.loads((cache_dir / MARKER).read_text())["limit_bytes"] == int(one * 1.5)


def test_cache_limit_parsing_and_bad_values(capsys, cache_dir):
    assert parse_size("2GiB") == 2 << 30 and parse_size("500 MB") == 500_000_000
    assert parse_size("1e6") == 1_000_000
    result = run_cli(capsys, "cache", "limit", "lots")
    assert_clean_failure(result, EXIT_USAGE, "not a size", "2GiB")


def test_remembered_hashes_and_manifests_that_are_not_objects(
    capsys, tmp_path, cache_dir, recipe, tiny_bert_dir
):
    out = tmp_path / "out"
    build(capsys, recipe, tiny_bert_dir, "-o", out)
    (cache_dir / "file-hashes.json").write_text("[1, 2, 3]")
    report = build(capsys, recipe, tiny_bert_dir, "-o", out)
    assert report["cache"] == "up-to-date"
    (out / "manifest.json").write_text('"just a string"')
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", out)
    assert_clean_failure(result, EXIT_USAGE, "output directory already exists")
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", out, "--force")
    assert_clean_failure(result, EXIT_USAGE, "manifest.json that is not fxopt's")


def test_a_legacy_cache_is_adopted_and_cleared(capsys, tmp_path):
    legacy = tmp_path / "old-cache"
    (legacy / "outputs" / ("a" * 64)).mkdir(parents=True)
    (legacy / "file-hashes.json").write_text("{}")
    assert CacheRoot(legacy).foreign() is None
    result = run_cli(capsys, "cache", "clear", "--cache-dir", legacy)
    assert result.code == 0 and "removed 1 cache entries" in result.err
