"""Command line: `olive-systems run --config RECIPE`. Only argparse loads before a command runs."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="olive-systems", description="Optimize models for ONNX Runtime from a YAML recipe.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and pass logs")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a recipe: passes, evaluation, ranking, output folder")
    run.add_argument("--config", required=True, help="recipe file (.yaml, .yml or .json)")
    run.add_argument("--output-dir", help="override engine.output_dir")
    run.add_argument("--cache-dir", help="override engine.cache_dir")
    run.add_argument("--clean-cache", action="store_true", help="empty the cache first")
    run.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and pass logs")

    validate = commands.add_parser("validate", help="check a recipe against the schema without running it")
    validate.add_argument("--config", required=True)

    schema = commands.add_parser("schema", help="print the recipe JSON Schema (pass configs included)")
    schema.add_argument("--output-dir", help="write recipe, job and result schemas into this folder instead")

    cache = commands.add_parser("cache", help="inspect or empty the local cache")
    cache.add_argument("action", choices=["list", "clear"])
    cache.add_argument("--cache-dir", default=".olive-cache")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import OliveSystemsError

    try:
        return COMMANDS[args.command](args)
    except OliveSystemsError as exc:
        if args.verbose:
            raise
        lines = exc.message.splitlines()
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {exc.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the cache and the output folder hold only complete entries", file=sys.stderr)
        return 130


def cmd_run(args) -> int:
    from .engine import Engine
    from .progress import Progress, print_summary
    from .recipe import load_recipe

    import logging

    # Libraries (the ORT quantizer above all) log warnings by the hundred; --verbose shows them.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    recipe = load_recipe(args.config)
    engine_config = recipe["engine"]
    if args.output_dir:
        engine_config["output_dir"] = args.output_dir
    if args.cache_dir:
        engine_config["cache_dir"] = args.cache_dir
    if args.clean_cache:
        engine_config["clean_cache"] = True
    with Progress(verbose=args.verbose) as progress:
        output = Engine(recipe, progress.on_event).run()
    print_summary(output)
    return 1 if output.failures else 0


def cmd_validate(args) -> int:
    from .recipe import load_recipe

    recipe = load_recipe(args.config)
    print(f"{recipe['name']}: valid ({len(recipe['passes'])} passes, {len(recipe['pass_flows'])} flows)")
    return 0


def cmd_schema(args) -> int:
    import json

    from .recipe import recipe_schema

    from pathlib import Path

    from .job import JOB_SCHEMA, RESULT_SCHEMA

    schemas = {"recipe": recipe_schema(), "job": JOB_SCHEMA, "result": RESULT_SCHEMA}
    if not args.output_dir:
        sys.stdout.write(json.dumps(schemas["recipe"], indent=2) + "\n")
        return 0
    for name, schema in schemas.items():
        (Path(args.output_dir) / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    return 0


def cmd_cache(args) -> int:
    from pathlib import Path

    from .cache import LocalCache

    cache = LocalCache(Path(args.cache_dir))
    if args.action == "clear":
        cache.clear()
        print(f"cleared {args.cache_dir}")
        return 0
    for kind in ("runs", "evaluations"):
        for entry in cache.entries(kind):
            label = entry.meta.get("pass") or entry.meta.get("model", "")
            print(f"{kind:<12} {entry.key}  {label}")
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "schema": cmd_schema, "cache": cmd_cache}
