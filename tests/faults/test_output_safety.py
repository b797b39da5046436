"""fxopt never deletes or overwrites anything it did not write: every ``-o`` that would have
cost a user data is refused before work starts, with a clean message and the data intact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fxopt.engine.errors import EXIT_USAGE, DiskSpaceError, OutputError
from fxopt.store.output_guard import Seen, check_parent, check_replaceable
from fxopt.store.staging import StagedDir, sweep_stale
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_RECIPE, write_recipe


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def recipe(tmp_path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return write_recipe(folder, TINY_RECIPE.format(backend="onnxruntime"))


@pytest.fixture
def built(capsys, recipe, model_copy, tmp_path) -> Path:
    """An output an earlier fxopt run wrote."""
    out = tmp_path / "built"
    result = run_cli(capsys, recipe, model_copy, "-o", out, "-q")
    assert result.code == 0, result.err
    return out


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        (lambda recipe, model: model, "is the model"),
        (lambda recipe, model: model / "out", "sits inside the model"),
        (lambda recipe, model: recipe.parent, "is the recipe's folder"),
        (lambda recipe, model: recipe.parent.parent, "contains the"),
    ],
    ids=["model", "inside-model", "recipe-folder", "contains-inputs"],
)
def test_force_never_replaces_an_input(capsys, recipe, model_copy, where, needle):
    target = where(recipe, model_copy)
    before = snapshot(target if target.exists() else model_copy)
    result = run_cli(capsys, recipe, model_copy, "-o", target, "--force")
    assert_clean_failure(result, EXIT_USAGE, needle, "fxopt never writes over its own inputs")
    assert snapshot(target if target.exists() else model_copy) == before
    assert (model_copy / "model.safetensors").is_file()


def test_dot_as_output_is_refused_before_work(capsys, recipe, model_copy, monkeypatch):
    monkeypatch.chdir(recipe.parent)
    result = run_cli(capsys, recipe, model_copy, "-o", ".", "--force")
    assert_clean_failure(result, EXIT_USAGE, "is the recipe's folder")
    assert recipe.is_file()


def test_output_may_not_be_a_data_file_or_the_cache(capsys, tmp_path, model_copy, monkeypatch):
    data = tmp_path / "calib.txt"
    data.write_text("\n".join(f"calibration line {i}" for i in range(8)))
    text = TINY_RECIPE.format(backend="onnxruntime") + (
        '\n[data.calibration]\nsource = "text"\npath = "calib.txt"\nsamples = 4\n'
    )
    recipe = write_recipe(tmp_path, text)
    result = run_cli(capsys, recipe, model_copy, "-o", data, "--force")
    assert_clean_failure(result, EXIT_USAGE, "is the data file")
    assert data.read_text().startswith("calibration line 0")

    cache = tmp_path / "cache"
    monkeypatch.setenv("FXOPT_CACHE_DIR", str(cache))
    result = run_cli(capsys, recipe, model_copy, "-o", cache / "out")
    assert_clean_failure(result, EXIT_USAGE, "sits inside the cache directory")


def test_force_refuses_a_directory_fxopt_did_not_write(capsys, recipe, model_copy, tmp_path):
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "notes" / "a.txt").write_text("more")
    before = snapshot(mine)
    result = run_cli(capsys, recipe, model_copy, "-o", mine, "--force")
    assert_clean_failure(
        result, EXIT_USAGE, "has no manifest.json", "would have deleted 2 file(s)", "thesis.tex"
    )
    assert snapshot(mine) == before

    (mine / "manifest.json").write_text("[1, 2]")  # valid JSON, not an fxopt manifest
    result = run_cli(capsys, recipe, model_copy, "-o", mine, "--force")
    assert_clean_failure(result, EXIT_USAGE, "manifest.json that is not fxopt's")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_force_replaces_an_earlier_output_but_not_files_added_to_it(
    capsys, recipe, model_copy, built
):
    (built / "my-notes.txt").write_text("keep me")
    result = run_cli(capsys, recipe, model_copy, "-o", built, "--force", "--no-cache")
    assert_clean_failure(result, EXIT_USAGE, "holds files its manifest does not list", "my-notes")
    assert (built / "my-notes.txt").read_text() == "keep me"

    (built / "my-notes.txt").unlink()
    result = run_cli(capsys, recipe, model_copy, "-o", built, "--force", "--no-cache", "-q")
    assert result.code == 0, result.err
    assert json.loads((built / "manifest.json").read_text())["generator"] == "fxopt"
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".built.")]


def test_output_is_deployable_modes_and_no_links_into_the_cache(capsys, recipe, model_copy, built):
    mask = os.umask(0o022)
    os.umask(mask)
    for path in built.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path.name
    assert built.stat().st_mode & 0o777 == 0o777 & ~mask
    shutil.rmtree(built)
    result = run_cli(capsys, recipe, model_copy, "-o", built, "--json")
    assert json.loads(result.out)["cache"] == "restored"
    assert all(p.stat().st_nlink == 1 for p in built.iterdir())  # copies, not hard links
    report = (built / "report.md").read_text()
    assert "Deploy `model.ort.onnx`" in report


def test_output_parent_that_is_a_file(capsys, recipe, model_copy, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = run_cli(capsys, recipe, model_copy, "-o", tmp_path / "afile" / "out")
    assert_clean_failure(result, EXIT_USAGE, "is a file, not a directory", "fix:")


def test_output_name_too_long(capsys, recipe, model_copy, tmp_path):
    result = run_cli(capsys, recipe, model_copy, "-o", tmp_path / ("x" * 300))
    assert_clean_failure(result, EXIT_USAGE, "file name too long", "fix:")


def test_unwritable_output_parent(capsys, recipe, model_copy, tmp_path, monkeypatch):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the file system say what it would
        import errno
        import tempfile

        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(parent))

        monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    result = run_cli(capsys, recipe, model_copy, "-o", parent / "out")
    assert_clean_failure(result, EXIT_USAGE, "cannot create the output directory here", "fix:")
    assert list(parent.iterdir()) == []


def test_free_space_is_checked_up_front(tmp_path):
    with pytest.raises(DiskSpaceError, match="not enough free space") as caught:
        check_parent(tmp_path / "out", needed_bytes=1 << 62)
    assert caught.value.exit_code == 4


def test_a_directory_that_appears_during_the_run_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    for content in ({"theirs.txt": "data"}, {}):  # an empty one too: rename(2) would replace it
        seen = check_replaceable(target, force=False)
        staged = StagedDir(target, seen)
        with staged as tmp:
            (tmp / "model.onnx").write_text("ours")
            target.mkdir()
            for name, text in content.items():
                (target / name).write_text(text)
            with pytest.raises(OutputError, match="changed while this run was going"):
                staged.commit()
        assert sorted(p.name for p in target.iterdir()) == sorted(content)
        assert [p.name for p in tmp_path.iterdir()] == ["out"]  # staging removed
        shutil.rmtree(target)


def test_two_runs_into_one_new_output_the_second_is_refused(tmp_path):
    target = tmp_path / "out"
    first, second = (StagedDir(target, Seen(exists=False)) for _ in range(2))
    with first as a, second as b:
        (a / "model.onnx").write_text("first")
        (b / "model.onnx").write_text("second")
        first.commit()
        with pytest.raises(OutputError, match="changed while this run was going"):
            second.commit()
    assert (target / "model.onnx").read_text() == "first"


def test_staging_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "out"
    with StagedDir(target, Seen(exists=False)) as live:
        stale = Path(str(live).replace(f".{os.getpid()}.", f".{dead.pid}."))
        stale.mkdir()
        (stale / "model.onnx.data").write_bytes(b"x" * 100)
        assert sweep_stale(tmp_path, "out") == [stale]
        assert live.is_dir()  # a running process's staging is left alone
    assert not stale.exists()


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_leaves_nothing_behind(tmp_path, tiny_bert_dir, signum):
    import signal
    import time

    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))
    out = tmp_path / "out"
    env = {**os.environ, "FXOPT_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "fxopt.cli.app", recipe, tiny_bert_dir, "-o", out]
    proc = subprocess.Popen([str(c) for c in command], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signum))
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == (143 if signum == "SIGTERM" else 130), err
    assert "nothing was written" in err and "Traceback" not in err
    assert "RuntimeWarning" not in err  # `python -m fxopt.cli.app` runs the module once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "recipe.toml"]
    assert not list((tmp_path / "cache").rglob(".*.tmp"))


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupt_something_swallowed_still_stops_the_commit(tmp_path, signum):
    """A library that catches ``KeyboardInterrupt`` (or a ``__del__``, whose exceptions the
    interpreter drops) must not turn Ctrl-C into a finished, published output."""
    import signal
    import time

    from fxopt.engine import interrupts
    from fxopt.store.entries import new_entry

    target = tmp_path / "out"
    with interrupts.handling():
        staged = StagedDir(target, Seen(exists=False))
        with staged as tmp:
            (tmp / "model.onnx").write_text("half of a model")
            try:
                os.kill(os.getpid(), getattr(signal, signum))
                time.sleep(1)  # the handler raises here
            except KeyboardInterrupt:
                pass  # swallowed, as some libraries do
            with pytest.raises(KeyboardInterrupt) as caught:
                staged.commit()
            assert isinstance(caught.value, interrupts.Terminated) == (signum == "SIGTERM")
            with pytest.raises(KeyboardInterrupt), new_entry(tmp_path / "cache" / "key") as entry:
                (entry / "result.pt").write_text("half of a result")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert not list((tmp_path / "cache").iterdir())
    # the handlers gone, the interrupt is forgotten: the next run commits
    again = StagedDir(target, Seen(exists=False))
    with again as tmp:
        (tmp / "model.onnx").write_text("whole")
        again.commit()
    assert (target / "model.onnx").read_text() == "whole"


def test_disk_full_while_lowering_is_one_clean_message(capsys, recipe, model_copy, tmp_path):
    import errno

    from fxopt.plugins.onnxruntime import backend as ort_backend

    def full(ir, path, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ort_backend, "export_onnx", full)
        result = run_cli(capsys, recipe, model_copy, "-o", tmp_path / "out")
    assert_clean_failure(result, 4, "no space left on the device", "model.onnx", "fix:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "project"]


def test_disk_full_on_the_cache_costs_only_the_cache(
    capsys, recipe, model_copy, tmp_path, monkeypatch
):
    import errno

    from fxopt.store import outputs as build_cache

    def full(source, dest, skip=frozenset()):
        (dest / "model.onnx").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(dest / "model.onnx"))

    monkeypatch.setenv("FXOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build_cache, "copy_tree", full)
    result = run_cli(capsys, recipe, model_copy, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert "could not keep the output in the cache" in " ".join(result.err.split())
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not list((tmp_path / "cache" / "outputs").iterdir())  # no half-written entry


def test_depfile_and_ir_dump_never_write_over_inputs(capsys, recipe, model_copy, tmp_path):
    config = (model_copy / "config.json").read_text()
    result = run_cli(
        capsys, recipe, model_copy, "-o", tmp_path / "out", "--depfile", model_copy / "config.json"
    )
    assert_clean_failure(result, EXIT_USAGE, "--depfile", "the depfile sits inside the model")
    assert (model_copy / "config.json").read_text() == config

    mine = tmp_path / "notes.d"
    mine.write_text("my own notes")
    result = run_cli(capsys, recipe, model_copy, "-o", tmp_path / "out", "--depfile", mine)
    assert_clean_failure(result, EXIT_USAGE, "not a depfile fxopt wrote")
    assert mine.read_text() == "my own notes"

    result = run_cli(
        capsys, recipe, model_copy, "-o", tmp_path / "out", "--dump-ir", model_copy / "ir"
    )
    assert_clean_failure(result, EXIT_USAGE, "--dump-ir", "sits inside the model")
    assert not (tmp_path / "out").exists()


def test_a_depfile_fxopt_wrote_is_rewritten(capsys, recipe, model_copy, tmp_path):
    depfile = tmp_path / "out.d"
    for _ in range(2):
        result = run_cli(capsys, recipe, model_copy, "-o", tmp_path / "out", "--depfile", depfile)
        assert result.code == 0, result.err
    assert depfile.read_text().split("\n", 1)[0].endswith("manifest.json: \\")
