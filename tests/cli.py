"""Run the CLI in-process and capture what a user would see."""

from __future__ import annotations

from dataclasses import dataclass

from fxopt.cli.app import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys, *args: object) -> Result:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_clean_failure(result: Result, code: int, *needles: str) -> None:
    """A user error: the expected exit code, the message parts, and no traceback."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err
    text = " ".join(result.err.split())
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
