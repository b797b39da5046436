"""The ``optimize`` command: ``optimize RECIPE [MODEL_DIR]`` runs a recipe; ``validate``,
``passes``, ``schema``, ``bench``, ``cache``, ``check``, ``generate`` and ``search`` do the
rest (``optimize --help``).

Why click: one decorator per option replaces a hand-built parser per command and a dispatch
table, and click adds shell completion (``_OPTIMIZE_COMPLETE``) and "did you mean" for a
mistyped option. What stays ours: the first argument is a recipe path unless it names a
command (:class:`_Optimize`); every command ends in an exit code
(:mod:`fxopt.engine.errors`) and at most one message (:func:`_handle`), usage errors
included (:func:`main`). Torch and the run are imported inside the commands: ``--help``
and the no-op rerun never import torch.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import sys
import traceback
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn

import click
from click.shell_completion import CompletionItem

from fxopt.engine import errors, interrupts
from fxopt.engine.errors import BudgetError, FxoptError, OutputError, RecipeError, environment_error
from fxopt.engine.interrupts import Terminated
from fxopt.run import library_log

PATH = click.Path(path_type=Path)  # no exists=True: the engine's own errors name file and fix
CACHE_DIR_HELP = "the cache (default $FXOPT_CACHE_DIR, $XDG_CACHE_HOME/fxopt, ~/.cache/fxopt)"


def main(argv: list[str] | None = None) -> int:
    """The console script: parse, run one command, return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return cli.main(args, prog_name="optimize", standalone_mode=False)
    except click.ClickException as exc:  # unknown option, missing argument, bad choice, ...
        from fxopt.engine.console import Output

        ctx = getattr(exc, "ctx", None)  # where it happened: the fix names that command's help
        command = ctx.command_path.removesuffix(" run") if ctx else "optimize"
        message = re.sub(r"[.\s]+Did you mean", "; did you mean", exc.format_message())
        message = message[:1].lower() + message[1:].rstrip(".")
        Output().error(FxoptError(message, fix=f"see {command} --help").render())
        return errors.EXIT_USAGE


def _handle(handler, args: SimpleNamespace, output) -> int:
    """Run one command; every way it can end becomes an exit code and at most one message."""
    try:
        return handler(args, output) or errors.EXIT_OK  # a command that returns nothing succeeded
    except BudgetError as exc:
        if getattr(args, "json", False) and getattr(exc, "report", None) is not None:
            print(exc.report.to_json())
        output.error(exc.render())
        return exc.exit_code
    except FxoptError as exc:
        output.error(exc.render())
        return exc.exit_code
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        output.error(f"{how}; nothing was written")
        return errors.EXIT_TERMINATED if isinstance(exc, Terminated) else errors.EXIT_INTERRUPTED
    except Exception as exc:
        if (error := environment_error(exc)) is not None:
            output.error(error.render())
            return error.exit_code
        traceback.print_exc()
        output.error("internal error (a bug in fxopt or a plugin); the traceback is above")
        return errors.EXIT_INTERNAL


class _Command(click.Command):
    """A command whose callback takes ``(args, output)`` and ends in an exit code; it runs
    inside :func:`_handle`, before click could turn a Ctrl-C into its own ``Abort``."""

    def invoke(self, ctx: click.Context) -> int:
        from fxopt.engine.console import Output

        output = Output(quiet=ctx.params.get("quiet", False) or ctx.params.get("json", False))
        with interrupts.handling(), library_log.collected():
            params = {k: list(v) if isinstance(v, tuple) else v for k, v in ctx.params.items()}
            return _handle(self.callback, SimpleNamespace(**params), output)


class _Optimize(click.Group):
    """``optimize RECIPE ...`` is ``optimize run RECIPE ...``: the first argument is a recipe
    path unless it names a command; ``optimize --help`` shows run's options too."""

    command_class = _Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        commands = (*self.commands, *ctx.help_option_names)
        # no words yet while completing: the first word is a command or a recipe file
        if (args[0] not in commands) if args else not ctx.resilient_parsing:
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        pieces = "RECIPE [MODEL_DIR] [OPTIONS] | COMMAND [ARGS]..."
        formatter.write_usage(ctx.command_path, pieces, prefix="usage: ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Options (optimize RECIPE [MODEL_DIR] ...)"):
            params = self.commands["run"].get_params(ctx)
            formatter.write_dl(
                [p.get_help_record(ctx) for p in params if isinstance(p, click.Option)]
            )
        self.format_commands(ctx, formatter)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        # a file first: bash then offers files only when no command name matches
        files = [] if incomplete.startswith("-") else [CompletionItem(incomplete, type="file")]
        return [*files, *super().shell_complete(ctx, incomplete)]


def _complete_kinds(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """``--kind``: the kinds of the installed plugins (packages add kinds as they load)."""
    from fxopt.engine.plugin_host import load_plugins

    with contextlib.suppress(FxoptError):
        return [kind for kind in load_plugins().registries() if kind.startswith(incomplete)]
    return []


def _flag(*decls: str, help: str):
    return click.option(*decls, is_flag=True, help=help)


def _recipe_arguments(func):
    """RECIPE and the optional MODEL_DIR of every command that runs a recipe."""
    func = click.argument("model_dir", type=PATH, required=False)(func)
    return click.argument("recipe", type=PATH)(func)


def _cache_options(no_cache_help: str):
    """--cache-dir and --no-cache, the latter's help saying what it costs this command."""

    def decorate(func):
        func = click.option(
            "--no-cache", "use_cache", flag_value=False, default=True, help=no_cache_help
        )(func)
        return click.option("--cache-dir", type=PATH, help=CACHE_DIR_HELP)(func)

    return decorate


_plugin_option = click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="NAME",
    help="load this plugin even with FXOPT_DISABLE_PLUGIN_AUTOLOAD=1 (repeatable)",
)


@click.group(
    cls=_Optimize,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="exit codes: 0 ok, 2 usage or input error, 3 fidelity budget missed, 4 backend "
    "unavailable or disk full, 5 internal error, 130 interrupted, 143 terminated.\n\n"
    "\b\nshell completion (bash; zsh_source and fish_source for zsh, fish):\n"
    '  eval "$(_OPTIMIZE_COMPLETE=bash_source optimize)"',
)
def cli() -> None:
    """Optimize a PyTorch / Hugging Face model as a recipe says, verify it, write the
    artifact. MODEL_DIR: the model directory or .pt2 (default: the recipe's [model] path)."""


@cli.command()
@_recipe_arguments
@click.option("-o", "--out", "out_dir", type=PATH, help="output directory (default RECIPE-out)")
@_flag("--force", help="replace an existing output dir")
@_flag("--json", help="print the report as JSON only")
@_flag("-q", "--quiet", help="print errors only")
@click.option("--dump-ir", type=PATH, metavar="DIR", help="write the graph per pass")
@_cache_options("read and write no cache at all (outputs, pass results, calibration)")
@_flag("--verify-inputs", help="re-hash every model and data file, not trust remembered hashes")
@_plugin_option
@click.option("--depfile", type=PATH, metavar="PATH", help="write a Make/Ninja depfile of inputs")
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    metavar="[CHECKPOINT]",
    help="resume fine-tuning from a checkpoint file or directory (default: the latest)",
)
@_flag("--allow-pickle", help="allow *.bin checkpoints")
@_flag("--trust-remote-code", help="allow code shipped with the model")
def run(args: SimpleNamespace, output) -> None:
    """Run a recipe (the default command: optimize RECIPE [MODEL_DIR]).

    Optimize the model as RECIPE says, verify it, write the artifact. MODEL_DIR: the model
    directory or .pt2 (default: the recipe's [model] path)."""
    from fxopt.run.options import RunOptions
    from fxopt.run.plan import plan_build

    # the options are named after RunOptions' fields
    options = RunOptions(**{f.name: getattr(args, f.name) for f in fields(RunOptions)})
    # planned once: recipe, model, output rules, cache key, rank (no torch imported yet)
    build = plan_build(args.recipe, args.model_dir, options, output)
    if build.rank != 0:  # torchrun: rank 0 speaks for all
        output.quiet = True
    report = build.finished()  # the no-op path: answered before torch is imported
    if report is None:
        from fxopt.run import execute

        report = execute(build, options, output)
    if args.json:
        print(report.to_json())
    elif report.data.get("cache"):
        output.step(
            f"{report['out_dir']} is up to date ({report.data['cache']}, cache key "
            f"{build.key[:12]})"
        )
    else:
        report.print_summary(output)
        output.step(f"wrote {report['out_dir']}")


@cli.command()
@click.argument("action", type=click.Choice(("info", "clear", "limit")))
@click.argument("size", required=False)
@click.option("--cache-dir", type=PATH, help=CACHE_DIR_HELP)
@_flag("--json", help="print the cache's usage as JSON")
def cache(args: SimpleNamespace, output) -> None:
    """Show the cache, clear it, or set its size limit.

    info: size, limit, entries; clear: remove every entry; limit SIZE (e.g. 2GiB, 500MB):
    least recently used entries go first."""
    from fxopt.store.root import CacheRoot, locate, parse_size

    location = locate(args.cache_dir)
    if location.path is None:
        raise OutputError(
            f"cannot find the cache: {location.reason}",
            field="--cache-dir",
            fix="pass --cache-dir or set FXOPT_CACHE_DIR",
        )
    cache = CacheRoot(location.path)
    if args.action == "clear":
        removed = cache.clear()
        output.console.print(f"removed {removed} cache entries from {cache.path}")
        return
    if args.action == "limit":
        if args.size is None:
            raise OutputError("say the limit", field="size", fix="optimize cache limit 2GiB")
        try:
            limit = parse_size(args.size)
        except ValueError as exc:
            raise OutputError(str(exc), field="size", fix="optimize cache limit 2GiB") from exc
        if (why := cache.foreign()) is not None:
            raise OutputError(f"this directory {why}", file=cache.path, field="--cache-dir")
        cache.set_limit(limit)
        cache.evict(output=output)
    info = cache.usage()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        output.console.print(
            f"{info['path']}: {info['outputs']} outputs, {info['passes']} pass results, "
            f"{info['calibration']} calibrations; {info['bytes'] / 2**20:.1f} MiB of "
            f"{info['limit_bytes'] / 2**20:.0f} MiB limit"
        )


@cli.command()
@click.argument("recipe", type=PATH)
@_plugin_option
def validate(args: SimpleNamespace, output) -> None:
    """Check a recipe against the installed plugins; run nothing."""
    from fxopt.engine.plugin_host import load_plugins
    from fxopt.run.bind import bind
    from fxopt.run.recipe import check_files, load_recipe

    recipe = load_recipe(args.recipe)
    host = load_plugins(only=args.plugins)
    plan = bind(recipe, host)
    builtins = tuple(n for entry in host.loaders for n in getattr(entry.obj, "builtin_models", ()))
    check_files(recipe, builtin_models=builtins)
    plan.backend.check_available()
    names = ", ".join(p.name for p in plan.passes) or "no passes"
    searched = ""
    if recipe.search is not None:  # each candidate of the space is a recipe to check too
        from fxopt.search.driver import plan_candidates

        searched = f"; search space: {len(plan_candidates(recipe, host)[1])} candidates"
    output.console.print(f"{args.recipe}: ok ({names} → {plan.backend.name}{searched})")


@cli.command()
@click.argument("text", required=False)
@click.option("--filter", "pattern", metavar="TEXT", help="only names containing TEXT")
@click.option("--kind", shell_complete=_complete_kinds, help="only this kind, e.g. layer_pruners")
@_flag("--json", help="print the listing as JSON: kind -> entries")
@_plugin_option
def passes(args: SimpleNamespace, output) -> None:
    """List registered passes, backends, loaders, datasets, ... and where each comes from.

    TEXT (or --filter TEXT) keeps the names containing it. Without --kind, a kind with more
    than 25 matching entries (the layer pruners) shows as one count line."""
    from fxopt.engine.plugin_host import load_plugins

    host = load_plugins(only=args.plugins)
    if args.kind not in (None, *(kinds := host.registries())):
        raise FxoptError(f"no kind {args.kind!r}", field="--kind", fix=f"one of {', '.join(kinds)}")
    needles = [text.lower() for text in (args.text, args.pattern) if text]
    listing = {
        kind: [e for e in registry if all(n in e.name.lower() for n in needles)]
        for kind, registry in host.registries().items()
        if args.kind in (None, kind)
    }
    if args.json:
        shown = {k: [{"name": e.name, "origin": e.origin} for e in v] for k, v in listing.items()}
        shown["failed_plugins"] = [f.__dict__ for f in host.failures]
        print(json.dumps(shown, indent=2))
        return
    from rich.table import Table

    table = Table(title="registered plugins")
    for column in ("kind", "name", "from", "summary"):
        table.add_column(column)
    for kind, entries in listing.items():
        if args.kind is None and len(entries) > 25:  # the layer pruners: one line
            table.add_row(kind, f"({len(entries)} entries)", "", f"optimize passes --kind {kind}")
            continue
        for e in entries:  # summary: the first docstring line of the class, else its module's
            doc = e.obj.__doc__ or sys.modules[e.obj.__module__].__doc__ or ""
            table.add_row(kind, e.name, e.origin, (doc.strip().splitlines() or [""])[0])
    output.console.print(table)
    for failure in host.failures:
        output.warn(f"plugin {failure.name} ({failure.distribution}) failed: {failure.error}")


@cli.command()
def schema(args: SimpleNamespace, output) -> None:
    """Print the recipe JSON schema."""
    from fxopt.engine.plugin_host import load_plugins
    from fxopt.run.recipe_schema import recipe_schema

    print(json.dumps(recipe_schema(load_plugins()), indent=2))


@cli.command()
@click.argument("out_dir", type=PATH)
@click.option("--iters", type=int, default=30, help="timed calls of each runner (default: 30)")
@click.option("--warmup", type=int, default=5, help="untimed calls before each (default: 5)")
@click.option("--batch", type=int, help="batch size (default: the recipe's opt batch size)")
@_flag("--json", help="print the timings as JSON")
def bench(args: SimpleNamespace, output) -> None:
    """Time an output directory's artifact next to the original model.

    Both run in this process on the same synthetic inputs, interleaved; prints median and
    p95."""
    from .bench import bench_output

    result = bench_output(
        args.out_dir, iters=args.iters, warmup=args.warmup, batch=args.batch, output=output
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"bench {args.out_dir} (shape {result['shape']})")
    for column in ("runner", "p50 ms", "p95 ms", "vs reference"):
        table.add_column(column, justify="right")
    for name in ("reference", "optimized"):
        row = result[name]
        ratio = result["reference"]["p50"] / row["p50"]
        table.add_row(name, f"{row['p50']:.3f}", f"{row['p95']:.3f}", f"{ratio:.2f}×")
    output.console.print(table)


@cli.command()
@click.argument("out_dir", type=PATH)
@click.option("--prompt", required=True, help="the text to continue")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option(
    "--temperature",
    type=click.FloatRange(0, 100),
    default=0.0,
    show_default=True,
    help="0: greedy; above: sample from the softmax at this temperature",
)
@click.option("--top-k", type=click.IntRange(0), default=0, help="sample among the k most likely")
@click.option("--seed", type=int, default=0, show_default=True, help="the sampling seed")
@_flag("--json", help="print the text and timings as JSON, nothing streamed")
def generate(args: SimpleNamespace, output) -> None:
    """Continue a prompt with a causal language model output, streamed, then tokens/s."""
    from .generate import generate_text

    result = generate_text(
        args.out_dir,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        stream=not args.json,
        output=output,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    output.step(
        f"{len(result['tokens'])} tokens on {result['backend']}: prompt {result['prefill_ms']:.1f}"
        f" ms, then {result['decode_tokens_per_second']:.1f} tokens/s"
    )


@cli.command()
@_recipe_arguments
@click.option("-o", "--out", "out_dir", type=PATH, help="search directory (default RECIPE-search)")
@_flag("--resume", help="continue an interrupted search in its directory")
@_flag("--force", help="start over in the directory of an earlier search")
@click.option(
    "--max-candidates",
    type=click.IntRange(1),
    help="allow a space this large (default: the recipe's [search] max_candidates)",
)
@_flag("--json", help="print search.json at the end")
@_flag("-q", "--quiet", help="print errors only")
@_cache_options("no cache: candidates that share passes compute them again")
@_plugin_option
@_flag("--allow-pickle", help="allow *.bin checkpoints")
@_flag("--trust-remote-code", help="allow code shipped with the model")
def search(args: SimpleNamespace, output) -> int:
    """Find the fastest (or smallest) artifact within the budget.

    Run every candidate of the recipe's [search.space] (docs/search.md), through the pass
    cache so shared passes run once; write search.json, search.md, frontier.svg and the
    winner (winner/ and winner.toml). Exit 3 when no candidate meets the budget; Ctrl-C
    keeps the finished candidates and --resume continues."""
    from fxopt.run.options import RunOptions
    from fxopt.search import SearchOptions
    from fxopt.search import search as run_search

    from .search import print_results

    run = RunOptions(
        cache_dir=args.cache_dir,
        use_cache=args.use_cache,
        plugins=args.plugins,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    options = SearchOptions(args.out_dir, args.resume, args.force, args.max_candidates, run)
    try:
        state = run_search(args.recipe, args.model_dir, options, output)
    except KeyboardInterrupt as exc:
        code = errors.EXIT_TERMINATED if isinstance(exc, Terminated) else errors.EXIT_INTERRUPTED
        where = args.out_dir or f"{Path(args.recipe).stem}-search"
        output.error(
            f"{'terminated' if code == errors.EXIT_TERMINATED else 'interrupted'}; the finished "
            f"candidates are kept in {where}; `optimize search {args.recipe} -o {where} "
            "--resume` continues"
        )
        return code
    print_results(state, output, as_json=args.json)
    return errors.EXIT_OK


@cli.command()
@_recipe_arguments
@_flag("--json", help="print the report as JSON")
@click.option(
    "--backend", default="tensorrt", show_default=True, help="the backend to ask for its check"
)
@_plugin_option
def check(args: SimpleNamespace, output) -> int:
    """Pre-flight: would a backend build this recipe's model?

    Load, capture and run the recipe's passes, then ask the backend's plugin to check
    statically whether it would build the result (TensorRT: ONNX ops, Q/DQ rules, shape
    profiles). Exit code 0: it would, 2: problems found."""
    from fxopt.engine.plugin_host import load_plugins

    host = load_plugins(only=args.plugins)
    code = host.pm.hook.fxopt_check(
        backend=args.backend,
        recipe=args.recipe,
        model_dir=args.model_dir,
        host=host,
        output=output,
        as_json=args.json,
    )
    if code is None:
        raise RecipeError(
            f"no installed plugin has a pre-flight check for backend {args.backend!r}",
            field="--backend",
            fix="check the name (optimize passes --kind backends); TensorRT has one",
        )
    return code


def console() -> NoReturn:
    """The ``optimize`` program: :func:`main`'s code becomes the process's exit status.

    After Ctrl-C or SIGTERM (130 / 143) the run has already removed what it staged and said
    so. The process then leaves through ``os._exit``, once the exit handlers have run and
    the streams are flushed. A normal interpreter teardown after an interrupt took up to a
    second here, with SIGINT back at its default action. In about one test run in three the
    process then died by SIGINT (status -2) instead of exiting 130, which a build system
    reads as a crash rather than an interruption."""
    code = main()
    if code in (errors.EXIT_INTERRUPTED, errors.EXIT_TERMINATED):
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
