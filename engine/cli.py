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
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, BudgetError, FxoptError

SUBCOMMANDS = ("validate", "passes", "schema", "bench", "check", "cache")


#: libraries that log import-time noise (optional kernels they could not load) at WARNING
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "torch.onnx", "onnxscript")


def main(argv: list[str] | None = None) -> int:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
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
    except KeyboardInterrupt:
        output.error("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        output.error("internal error (a bug in fxopt or a plugin); the traceback is above")
        return EXIT_INTERNAL


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
        help="build and pass cache (default $FXOPT_CACHE_DIR or ~/.cache/fxopt)",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write caches")
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
        parser.description = "Show or clear the build cache."
        parser.add_argument("action", choices=("info", "clear"))
        parser.add_argument("--cache-dir", type=Path)
        parser.add_argument("--json", action="store_true")
    elif command == "bench":
        parser.description = "Time an output directory's artifact next to the original model."
        parser.add_argument("out_dir", type=Path)
        parser.add_argument("--iters", type=int, default=30)
        parser.add_argument("--warmup", type=int, default=5)
        parser.add_argument("--batch", type=int, help="batch size (default: the recipe's opt)")
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
        plugins=args.plugin,
        depfile=args.depfile,
        resume=args.resume,
    )
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for all
        output.quiet = True
    if args.cache_dir:
        options.cache_dir = args.cache_dir
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
    from .build_cache import BuildCache
    from .run_options import default_cache_dir

    cache = BuildCache(args.cache_dir or default_cache_dir(), output=output)
    if args.action == "clear":
        removed = cache.clear()
        output.console.print(f"removed {removed} cache entries from {cache.root}")
        return EXIT_OK
    info = cache.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        output.console.print(
            f"{info['path']}: {info['outputs']} outputs, {info['pass_results']} pass results, "
            f"{info['bytes'] / 2**20:.1f} MiB"
        )
    return EXIT_OK


def _validate(args: argparse.Namespace, output) -> int:
    from .plan import bind
    from .plugin_host import load_plugins
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)
    plan = bind(recipe, load_plugins(only=args.plugin))
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

    result = bench_output(args.out_dir, iters=args.iters, warmup=args.warmup, batch=args.batch)
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
