"""The ``optimize`` command.

    optimize RECIPE [MODEL_DIR] [-o OUT] [--json] [-q] [--force]   run a recipe
    optimize validate RECIPE                                       check a recipe, run nothing
    optimize passes                                                list passes, backends, ...
    optimize schema                                                print the recipe JSON schema
    optimize bench OUT_DIR                                         time an artifact vs its source
    optimize check RECIPE [MODEL_DIR] [--json]                     TensorRT pre-flight report

Exit codes: 0 ok, 2 usage/recipe/input error, 3 fidelity budget missed, 4 backend
unavailable, 5 internal error, 130 interrupted. User errors print one message, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from . import library_log
from .errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    BudgetError,
    FxoptError,
    OutputError,
    environment_error,
)

SUBCOMMANDS = ("validate", "passes", "schema", "bench", "check", "cache")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        command, parser = argv[0], _subparser(argv[0])
        args = parser.parse_args(argv[1:])
    else:
        command, parser = "run", _run_parser()
        args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
    from .console import Output

    output = Output(quiet=quiet)
    handler: Callable[[argparse.Namespace, Output], int] = COMMANDS[command]
    with _signals_interrupt(), library_log.collected():
        return _handle(handler, args, output)


def _handle(handler, args: argparse.Namespace, output) -> int:
    """Run one command; every way it can end becomes an exit code and at most one message."""
    try:
        return handler(args, output)
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
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except Exception as exc:
        if (error := environment_error(exc)) is not None:
            output.error(error.render())
            return error.exit_code
        traceback.print_exc()
        output.error("internal error (a bug in fxopt or a plugin); the traceback is above")
        return EXIT_INTERNAL


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that every ``with`` and ``finally`` on the
    way out runs: staging directories and unfinished cache entries are removed."""


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    def terminate(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimize",
        description="Optimize a PyTorch / Hugging Face model as a recipe says, verify it, "
        "write the artifact. Other commands: " + ", ".join(SUBCOMMANDS) + " (optimize CMD -h).",
        epilog="exit codes: 0 ok, 2 usage or input error, 3 fidelity budget missed, "
        "4 backend unavailable, 5 internal error, 130 interrupted",
    )
    parser.add_argument("recipe", type=Path, help="recipe TOML file")
    parser.add_argument(
        "model_dir", type=Path, nargs="?", help="model directory or .pt2 (default: [model] path)"
    )
    parser.add_argument("-o", "--out", type=Path, help="output directory (default RECIPE-out)")
    parser.add_argument("--force", action="store_true", help="replace an existing output dir")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("--dump-ir", type=Path, metavar="DIR", help="write the graph per pass")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the cache (default $FXOPT_CACHE_DIR, else $XDG_CACHE_HOME/fxopt or ~/.cache/fxopt)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="read and write no cache at all (outputs, pass results, calibration)",
    )
    parser.add_argument(
        "--verify-inputs",
        action="store_true",
        help="re-hash every model and data file instead of trusting remembered hashes",
    )
    _add_plugin_option(parser)
    parser.add_argument(
        "--depfile", type=Path, metavar="PATH", help="write a Make/Ninja depfile of every input"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="resume fine-tuning from a checkpoint file or directory (default: the latest)",
    )
    parser.add_argument("--allow-pickle", action="store_true", help="allow *.bin checkpoints")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow code shipped with the model"
    )
    return parser


def _add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="load this plugin even with FXOPT_DISABLE_PLUGIN_AUTOLOAD=1 (repeatable)",
    )


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"optimize {command}")
    if command in ("validate", "passes", "check"):
        _add_plugin_option(parser)
    if command == "validate":
        parser.description = "Check a recipe against the installed plugins; run nothing."
        parser.add_argument("recipe", type=Path)
    elif command == "passes":
        parser.description = "List registered passes, backends, loaders and datasets."
        parser.add_argument("--json", action="store_true")
    elif command == "schema":
        parser.description = "Print the recipe JSON schema."
    elif command == "cache":
        parser.description = (
            "Show the cache (size, limit, entries), clear it, or set its size limit "
            "(optimize cache limit 2GiB); least recently used entries go first."
        )
        parser.add_argument("action", choices=("info", "clear", "limit"))
        parser.add_argument("size", nargs="?", help="for 'limit': e.g. 2GiB, 500MB")
        parser.add_argument("--cache-dir", type=Path)
        parser.add_argument("--json", action="store_true")
    elif command == "bench":
        parser.description = (
            "Time an output directory's artifact next to the original model, both in this "
            "process on the same synthetic inputs, interleaved; prints median and p95."
        )
        parser.add_argument("out_dir", type=Path)
        parser.add_argument(
            "--iters", type=int, default=30, help="timed calls of each runner (default: 30)"
        )
        parser.add_argument(
            "--warmup", type=int, default=5, help="untimed calls before each (default: 5)"
        )
        parser.add_argument(
            "--batch", type=int, help="batch size (default: the recipe's opt batch size)"
        )
        parser.add_argument("--json", action="store_true")
    elif command == "check":
        parser.description = (
            "Load, capture and run the recipe's passes, export ONNX, and check statically "
            "whether TensorRT would build it (ops, Q/DQ rules, shape profiles). Exit code 0: "
            "compatible, 2: problems found."
        )
        parser.add_argument("recipe", type=Path)
        parser.add_argument("model_dir", type=Path, nargs="?")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _run(args: argparse.Namespace, output) -> int:
    from .build_cache import plan_build
    from .run_options import RunOptions

    options = RunOptions(
        out_dir=args.out,
        force=args.force,
        dump_ir=args.dump_ir,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        use_cache=not args.no_cache,
        verify_inputs=args.verify_inputs,
        cache_dir=args.cache_dir,
        plugins=args.plugin,
        depfile=args.depfile,
        resume=args.resume,
    )
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for all
        output.quiet = True
    # the no-op path: answered before torch is imported
    build = plan_build(args.recipe, args.model_dir, options, output)
    report = build.finished()
    if report is None:
        from .pipeline import optimize

        report = optimize(build.recipe, build.model_path, options=options, output=output)
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
    return EXIT_OK


def _cache(args: argparse.Namespace, output) -> int:
    from .cache_root import CacheRoot, locate, parse_size

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
        return EXIT_OK
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
        from .build_cache import BuildCache

        BuildCache(cache.path, output=output).evict()
    info = cache.usage()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        output.console.print(
            f"{info['path']}: {info['outputs']} outputs, {info['passes']} pass results, "
            f"{info['calibration']} calibrations; {info['bytes'] / 2**20:.1f} MiB of "
            f"{info['limit_bytes'] / 2**20:.0f} MiB limit"
        )
    return EXIT_OK


def _validate(args: argparse.Namespace, output) -> int:
    from .plan import bind
    from .plugin_host import load_plugins
    from .recipe import check_files, load_recipe

    recipe = load_recipe(args.recipe)
    host = load_plugins(only=args.plugin)
    plan = bind(recipe, host)
    builtins = tuple(n for entry in host.loaders for n in getattr(entry.obj, "builtin_models", ()))
    check_files(recipe, builtin_models=builtins)
    plan.backend.check_available()
    names = ", ".join(p.name for p in plan.passes) or "no passes"
    output.console.print(f"{args.recipe}: ok ({names} → {plan.backend.name})")
    return EXIT_OK


def _passes(args: argparse.Namespace, output) -> int:
    from rich.table import Table

    from .plugin_host import load_plugins

    host = load_plugins(only=args.plugin)
    if args.json:
        listing = {
            kind: [{"name": e.name, "origin": e.origin} for e in registry]
            for kind, registry in host.registries().items()
        }
        listing["failed_plugins"] = [f.__dict__ for f in host.failures]
        print(json.dumps(listing, indent=2))
        return EXIT_OK
    table = Table(title="registered plugins")
    for column in ("kind", "name", "from", "summary"):
        table.add_column(column)
    for kind, registry in host.registries().items():
        for entry in registry:
            doc = _summary(entry.obj)
            table.add_row(kind, entry.name, entry.origin, doc[0] if doc else "")
    output.console.print(table)
    for failure in host.failures:
        output.warn(f"plugin {failure.name} ({failure.distribution}) failed: {failure.error}")
    return EXIT_OK


def _summary(obj: object) -> list[str]:
    """First docstring line of the class, or of its module when the class has none."""
    text = obj.__doc__ or sys.modules[obj.__module__].__doc__ or ""
    return text.strip().splitlines()


def _schema(args: argparse.Namespace, output) -> int:
    from .plugin_host import load_plugins
    from .schema import recipe_schema

    print(json.dumps(recipe_schema(load_plugins()), indent=2))
    return EXIT_OK


def _bench(args: argparse.Namespace, output) -> int:
    from .bench import bench_output

    result = bench_output(
        args.out_dir, iters=args.iters, warmup=args.warmup, batch=args.batch, output=output
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"bench {args.out_dir} (shape {result['shape']})")
    for column in ("runner", "p50 ms", "p95 ms", "vs reference"):
        table.add_column(column, justify="right")
    for name in ("reference", "optimized"):
        row = result[name]
        ratio = result["reference"]["p50"] / row["p50"]
        table.add_row(name, f"{row['p50']:.3f}", f"{row['p95']:.3f}", f"{ratio:.2f}×")
    output.console.print(table)
    return EXIT_OK


def _check(args: argparse.Namespace, output) -> int:
    from fxopt.plugins.trt_preflight import preflight

    from .plugin_host import load_plugins

    host = load_plugins(only=args.plugin)
    return preflight(args.recipe, args.model_dir, output=output, as_json=args.json, host=host)


COMMANDS = {
    "check": _check,
    "run": _run,
    "validate": _validate,
    "passes": _passes,
    "schema": _schema,
    "bench": _bench,
    "cache": _cache,
}

if __name__ == "__main__":
    sys.exit(main())
