"""The click command line: parsing, usage errors, the passes listing, help and completion.

Nothing here optimizes a model: the run command's callback is replaced where a test needs to
see what it would have been given.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fxopt.cli import app as cli
from tests.cli import assert_clean_failure, run_cli


@pytest.fixture
def captured(monkeypatch):
    """The run command, replaced by one that records its arguments and succeeds."""
    calls = []
    monkeypatch.setattr(cli.run, "callback", lambda args, output: calls.append(args))
    return calls


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["r.toml", "--forse"], ["no such option", "--forse", "; did you mean", "--force"]),
        (["--bogus", "r.toml"], ["no such option", "--bogus"]),
        ([], ["missing argument 'RECIPE'", "fix: see optimize --help"]),
        (["run", "-o"], ["option '-o' requires an argument"]),
        (["cache", "empty"], ["'empty' is not one of 'info', 'clear', 'limit'", "cache --help"]),
        (["passes", "--knd", "x"], ["no such option", "--knd", "; did you mean", "--kind"]),
        (["bench", "out", "--iters", "many"], ["'many' is not a valid integer"]),
    ],
)
def test_usage_errors_exit_2_with_one_message(capsys, captured, argv, needles):
    result = run_cli(capsys, *argv)
    assert_clean_failure(result, 2, "error:", "fix: see optimize", *needles)
    assert result.err.count("error:") == 1 and result.out == ""
    assert captured == []


def test_run_options_reach_the_run_command(capsys, captured):
    assert run_cli(capsys, "r.toml", "m", "-o", "o", "--no-cache", "--plugin", "a").code == 0
    assert run_cli(capsys, "run", "r.toml", "--plugin", "a", "--plugin", "b", "-q").code == 0
    first, second = captured
    assert (first.recipe, first.model_dir, first.out_dir) == (Path("r.toml"), Path("m"), Path("o"))
    assert first.use_cache is False and first.plugins == ["a"] and first.resume is None
    assert second.model_dir is None and second.use_cache is True and second.quiet is True
    assert second.plugins == ["a", "b"]


@pytest.mark.parametrize(
    ("flags", "resume"),
    [
        ([], None),
        (["--resume"], "latest"),
        (["--resume", "-q"], "latest"),
        (["--resume", "ckpt/step-10"], "ckpt/step-10"),
        (["--resume=ckpt"], "ckpt"),
    ],
)
def test_resume_bare_means_latest(capsys, captured, flags, resume):
    assert run_cli(capsys, "r.toml", "m", *flags).code == 0
    assert captured[0].resume == resume


def listing(capsys, *args: str) -> dict:
    result = run_cli(capsys, "passes", "--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_passes_kind_and_filter(capsys):
    only = listing(capsys, "--kind", "passes")
    assert set(only) == {"passes", "failed_plugins"}
    assert "cleanup.dce" in {p["name"] for p in only["passes"]}

    narrowed = listing(capsys, "--filter", "cleanup")
    names = [e["name"] for k, v in narrowed.items() if k != "failed_plugins" for e in v]
    assert names and all("cleanup" in n for n in names)
    assert len(names) < sum(len(v) for k, v in listing(capsys).items() if k != "failed_plugins")
    assert listing(capsys, "cleanup") == narrowed  # the positional form
    both = listing(capsys, "--kind", "backends", "--filter", "ONNX")
    assert [b["name"] for b in both["backends"]] == ["onnxruntime"]


def test_passes_unknown_kind_names_the_kinds(capsys):
    result = run_cli(capsys, "passes", "--kind", "nope")
    assert_clean_failure(result, 2, "--kind: no kind 'nope'", "fix: one of passes, backends")


def test_passes_table_collapses_the_layer_pruners(capsys):
    result = run_cli(capsys, "passes")
    assert result.code == 0
    assert re.search(r"layer_pruners\s*│\s*\(\d+ entries\)", result.err)
    assert "aten." not in result.err and "cleanup.dce" in result.err
    shown = run_cli(capsys, "passes", "--kind", "layer_pruners")
    assert "aten." in shown.err and "entries)" not in shown.err and "cleanup.dce" not in shown.err


def test_help_lists_commands_and_exit_codes(capsys):
    result = run_cli(capsys, "--help")
    assert result.code == 0
    assert result.out.startswith("usage: optimize")
    text = " ".join(result.out.split())
    for needed in ("exit codes: 0 ok", "143 terminated", "_OPTIMIZE_COMPLETE=bash_source"):
        assert needed in text
    for command in ("run", "validate", "passes", "schema", "bench", "cache", "check"):
        assert re.search(rf"^  {command}\s", result.out, re.M), command
    assert "--trust-remote-code" in result.out  # the default command's options
    assert "--resume" in run_cli(capsys, "r.toml", "--help").out


def complete(words: str) -> list[str]:
    env = {
        "_OPTIMIZE_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    result = CliRunner().invoke(cli.cli, [], env=env, prog_name="optimize")
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_shell_completion():
    assert "plain,passes" in complete("optimize pa")
    first = complete("optimize ")
    assert first[0] == "file," and "plain,validate" in first  # a recipe file, or a command
    assert "plain,--force" in complete("optimize recipe.toml --fo")
    assert complete("optimize passes --kind pas") == ["plain,passes"]  # loads the plugins
    assert complete("optimize cache c") == ["plain,clear"]


def test_help_and_usage_errors_do_not_import_torch():
    code = (
        "import sys; from fxopt.cli.app import main; "
        "codes = [main(['--help']), main(['passes', '--help']), main(['--nope'])]; "
        "assert codes == [0, 0, 2], codes; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
