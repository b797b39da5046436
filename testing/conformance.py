"""The checks behind :func:`assert_conformant`, each reported as a :class:`Problem`."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import Pass, PassConfig, PassContext, PassResult
from fxopt.run.toml_compat import tomllib

from .fixtures import sample_context, sample_ir
from .toml_text import to_toml

NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


@dataclass(frozen=True)
class Problem:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


def check_pass(
    pass_class: type[Pass],
    config: dict[str, Any] | None = None,
    ir: ModelIR | None = None,
    ctx: PassContext | None = None,
) -> list[Problem]:
    """Every conformance problem of ``pass_class`` run with ``config`` (empty list: none)."""
    problems = _check_name(pass_class) + _check_config(pass_class, config or {})
    if problems:
        return problems
    ir = ir or sample_ir()
    ctx = ctx or sample_context(ir)
    return _check_run(pass_class(pass_class.Config.model_validate(config or {})), ir, ctx)


def assert_conformant(
    pass_class: type[Pass],
    config: dict[str, Any] | None = None,
    ir: ModelIR | None = None,
    ctx: PassContext | None = None,
) -> None:
    problems = check_pass(pass_class, config, ir, ctx)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise AssertionError(f"{pass_class.__name__} is not conformant:\n{listing}")


def _check_name(pass_class: type[Pass]) -> list[Problem]:
    name = getattr(pass_class, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        return [Problem("name", f"{name!r} is not dotted and namespaced (like 'mycorp.prune')")]
    return []


def _check_config(pass_class: type[Pass], config: dict[str, Any]) -> list[Problem]:
    model = pass_class.Config
    if not (isinstance(model, type) and issubclass(model, PassConfig)):
        return [Problem("config", "Config must subclass fxopt.engine.PassConfig")]
    problems = []
    if model.model_config.get("extra") != "forbid":
        problems.append(Problem("config", "Config must refuse unknown keys (extra='forbid')"))
    try:
        parsed = model.model_validate(config)
    except ValidationError as exc:
        return [*problems, Problem("config", f"the given config does not validate: {exc}")]
    try:
        model.model_validate({**config, "__no_such_key__": 1})
        problems.append(Problem("config", "an unknown key was accepted"))
    except ValidationError:
        pass
    dumped = parsed.model_dump(mode="json", exclude_none=True)
    try:
        again = model.model_validate(tomllib.loads(to_toml(dumped)))
    except (ValidationError, tomllib.TOMLDecodeError, TypeError) as exc:
        return [*problems, Problem("config", f"does not round-trip through TOML: {exc}")]
    if again != parsed:
        problems.append(Problem("config", f"TOML round trip changed it: {parsed} -> {again}"))
    return problems


def _check_run(pass_: Pass, ir: ModelIR, ctx: PassContext) -> list[Problem]:
    feeds = {spec.name: t for spec, t in zip(ir.inputs, ir.example_inputs, strict=True)}
    before = [t.shape for t in ir.run(feeds)]
    inputs = list(ir.input_names)
    try:
        result = pass_.run(ir, ctx)
    except Exception as exc:
        return [Problem("run", f"raised {type(exc).__name__}: {exc}")]
    if not isinstance(result, PassResult):
        return [Problem("run", f"returned {type(result).__name__}, not a PassResult")]
    problems = []
    if not isinstance(result.preserved, (set, frozenset)) or not all(
        isinstance(name, str) for name in result.preserved
    ):
        problems.append(Problem("preserved", "must be a set of analysis names (or ALL)"))
    out = result.ir
    placeholders = [n.name for n in out.graph.nodes if n.op == "placeholder"]
    if placeholders != inputs:
        problems.append(Problem("signature", f"inputs changed from {inputs} to {placeholders}"))
    try:
        out.graph.lint()
        out.module.recompile()
    except Exception as exc:
        return [*problems, Problem("lint", str(exc))]
    try:
        after = [t.shape for t in out.run(copy.copy(feeds))]
    except Exception as exc:
        return [*problems, Problem("runs", f"the rewritten graph fails: {exc}")]
    if len(after) != len(before) or any(a[0] != b[0] for a, b in zip(after, before, strict=False)):
        problems.append(Problem("outputs", f"output shapes changed from {before} to {after}"))
    if not all(torch.is_tensor(t) for t in out.example_inputs):
        problems.append(Problem("ir", "example inputs are no longer tensors"))
    return problems
