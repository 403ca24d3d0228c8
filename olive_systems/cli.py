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
    run.add_argument("--account-name", help="Azure storage account of the shared cache")
    run.add_argument("--container-name", help="Azure Blob container of the shared cache")
    run.add_argument("--max-concurrency", type=int, metavar="N",
                     help="override engine.max_concurrency: candidates run side by side")
    run.add_argument("--setup", action="store_true", help="run nothing: pip-install the packages the recipe needs")
    run.add_argument("--packages", action="store_true",
                     help="run nothing: list the packages the recipe needs (and write OUTPUT_DIR/requirements.txt)")
    run.add_argument("--package-config", "--package_config", metavar="FILE",
                     help="with --setup/--packages: a JSON or YAML file adding to or overriding those packages")
    run.add_argument("--tempdir", help="root folder of the run's temporary files")
    run.add_argument("--log-level", "--log_level", type=int, choices=range(5), metavar="{0-4}",
                     help="logging level: 0 DEBUG, 1 INFO, 2 WARNING, 3 ERROR, 4 CRITICAL")
    run.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and pass logs")

    convert = commands.add_parser("convert-config", help="translate an Olive config (JSON or YAML) into a native recipe")
    convert.add_argument("config", help="the Olive config file")
    convert.add_argument("--output", help="write the recipe here (default: print it)")

    validate = commands.add_parser("validate", help="check a recipe against the schema without running it")
    validate.add_argument("--config", required=True)

    schema = commands.add_parser("schema", help="print the recipe JSON Schema (pass configs included)")
    schema.add_argument("--output-dir", help="write recipe, job and result schemas into this folder instead")

    report = commands.add_parser("report", help="(re)write report.html of a run's output folder")
    report.add_argument("output_dir", help="the output folder of a finished run (holds workflow_output.json)")

    cache = commands.add_parser("cache", help="list, show, prune, push, pull or clear cache entries")
    cache.add_argument("action", choices=["list", "show", "prune", "push", "pull", "clear"])
    cache.add_argument("keys", nargs="*", help="show/pull: entry keys (a unique prefix is enough)")
    cache.add_argument("--cache-dir", default=".olive-cache")
    cache.add_argument("--older-than", type=float, metavar="DAYS", help="prune: also entries created before this (orphans always go)")
    cache.add_argument("--account-name", help="shared cache: Azure storage account")
    cache.add_argument("--container-name", help="shared cache: Azure Blob container (list, push, pull)")

    systems = commands.add_parser("systems", help="prune: remove docker system containers whose run is gone")
    systems.add_argument("action", choices=["prune"])
    systems.add_argument("--all", action="store_true", help="every olive-systems container, those of running runs too")

    add_workflow_commands(commands)
    return parser


def add_workflow_commands(commands) -> None:
    """One subcommand per workflow function and utility function (workflows.WORKFLOWS, UTILITIES), its
    options generated from the function's signature and docstring (olive_systems.workflows.arguments)."""
    from .workflows import UTILITIES, WORKFLOWS
    from .workflows.arguments import add_function_arguments, docstring_summary

    for name, func in {**WORKFLOWS, **UTILITIES}.items():
        summary, description = docstring_summary(func)
        sub = commands.add_parser(name, aliases=[name.replace("_", "-")] if "_" in name else [],
                                  help=summary[:1].lower() + summary[1:].rstrip("."), description=description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        add_function_arguments(sub, func)
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and pass logs")
        sub.set_defaults(workflow=name)


# Exit codes: 0 every flow gave a candidate, 1 a flow failed (its failure is recorded in the
# output), 2 bad input or a run that could not start (nothing computed), 130/143 interrupted.
EXIT_FLOW_FAILED, EXIT_BAD_INPUT = 1, 2


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: systems stop, containers go, the output folder stays whole."""


def _interrupt_on_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise Interrupted(signum)

        signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import OliveSystemsError

    _interrupt_on_sigterm()
    try:
        return cmd_workflow(args) if getattr(args, "workflow", None) else COMMANDS[args.command](args)
    except OliveSystemsError as exc:
        if args.verbose:  # the traceback and the job's log, then the same message and exit code
            import traceback

            traceback.print_exc()
            for line in getattr(exc, "log_tail", None) or []:
                print(f"log: {line}", file=sys.stderr)
        for problem in getattr(exc, "each", None) or [exc]:
            for line in problem.message.splitlines():
                print(f"error: {line}", file=sys.stderr)
            if problem.fix:
                print(f"fix: {problem.fix}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print("interrupted: the cache and the output folder hold only complete entries", file=sys.stderr)
        return 143 if isinstance(exc, Interrupted) else 130


def cmd_run(args) -> int:
    from .api import kept_recipe_file
    from .engine import Engine
    from .progress import Progress, print_summary
    from .recipe import apply_overrides, load_recipe

    import logging

    # Libraries (the ORT quantizer above all) log warnings by the hundred; --verbose shows them.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    if args.log_level is not None:
        from .workflows.common import LOG_LEVELS, configure_logging

        configure_logging(args.log_level)
        logging.getLogger().setLevel(LOG_LEVELS[args.log_level])
    recipe = apply_overrides(load_recipe(args.config), args.output_dir, args.cache_dir, args.clean_cache,
                             args.account_name, args.container_name, args.max_concurrency)
    if args.setup or args.packages or args.package_config:
        return cmd_packages(args, recipe)
    from .api import temporary_root

    with temporary_root(args.tempdir), Progress(verbose=args.verbose) as progress, kept_recipe_file(args.config, recipe):
        output = Engine(recipe, progress.on_event).run()
    print_summary(output)
    return report_outcome(output, args.verbose)


def cmd_packages(args, recipe: dict) -> int:
    """run --packages / --setup: the recipe's packages listed (and written), or installed."""
    from pathlib import Path

    from . import workflow_packages
    from .errors import RecipeError

    if not (args.setup or args.packages):
        raise RecipeError("--package-config names the packages of --setup or --packages, and neither is given",
                          "add --setup or --packages, or drop --package-config")
    requirements = workflow_packages.recipe_requirements(recipe, args.package_config)
    if args.packages:
        written = workflow_packages.write_requirements(requirements, Path(recipe["engine"]["output_dir"]))
        print("\n".join(requirements))
        print(f"written: {written}", file=sys.stderr)
    if args.setup:
        installed = workflow_packages.install(requirements)
        print(f"installed: {', '.join(installed)}" if installed else "every package is installed already")
    return 0


def report_outcome(output, verbose: bool) -> int:
    """What a run replaced or kept, each failure's log with --verbose, and the exit code."""
    import datetime

    data = output.to_dict()

    def described(previous: dict) -> str:
        when = datetime.datetime.fromtimestamp(previous["written"]).strftime("%Y-%m-%d %H:%M")
        return f"{previous['output_dir']} ({previous['candidates']} candidates, written {when})"

    if data.get("kept_output"):
        print(f"no candidate: the previous output {described(data['kept_output'])} is kept; this run's failure "
              f"report is in {output.output_dir}", file=sys.stderr)
    elif data.get("replaced_output"):
        print(f"replaced the previous output {described(data['replaced_output'])}", file=sys.stderr)
    if verbose:
        for failure in output.failures:
            print(f"--- {failure['model_id']}: {failure['error']}", file=sys.stderr)
            for line in failure.get("traceback") or []:
                print(f"  {line}", file=sys.stderr)
            for line in failure.get("log_tail") or []:
                print(f"  log: {line}", file=sys.stderr)
            if failure.get("log_file"):
                print(f"  the job's whole log: {failure['log_file']}", file=sys.stderr)
    return EXIT_FLOW_FAILED if output.failures else 0


def cmd_workflow(args) -> int:
    """capture_onnx_graph, quantize, auto_opt: the function called with the parsed arguments."""
    import logging

    from .progress import Progress, print_summary
    from .workflows import UTILITIES, WORKFLOWS
    from .workflows.arguments import call_with_arguments
    from .workflows.common import EVENT_SINK, LOG_LEVELS, config_file

    # Libraries log at log_level (default 3, ERROR: the ORT quantizer's warnings come by the hundred).
    logging.basicConfig(level=LOG_LEVELS[args.log_level] if args.log_level in range(len(LOG_LEVELS)) else logging.ERROR)
    if args.workflow in UTILITIES:  # convert_adapters, extract_adapters, generate_cost_model: one file
        print(f"written: {call_with_arguments(UTILITIES[args.workflow], args)}")
        return 0
    with Progress(verbose=args.verbose) as progress:
        token = EVENT_SINK.set(progress.on_event)
        try:
            output = call_with_arguments(WORKFLOWS[args.workflow], args)
        finally:
            EVENT_SINK.reset(token)
    print_summary(output)
    if args.save_config_file:
        print(f"recipe: {config_file(args.workflow, output.output_dir)} (run it with olive-systems run --config)")
    return report_outcome(output, args.verbose)


def cmd_validate(args) -> int:
    from .recipe import load_recipe

    recipe = load_recipe(args.config, check_output=True)
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
    import json
    import time
    from pathlib import Path

    from .cache import LocalCache
    from .errors import OliveSystemsError

    remote = None
    if args.container_name:
        from .cache.blob import BlobRemote

        remote = BlobRemote(args.container_name, args.account_name)
    cache = LocalCache(Path(args.cache_dir), remote=remote)
    local = [entry for kind in ("runs", "evaluations") for entry in cache.entries(kind)]

    def find(prefix: str):
        matches = [entry for entry in local if entry.key.startswith(prefix)]
        if len(matches) != 1:
            raise OliveSystemsError(f"'{prefix}' matches {len(matches)} local entries", "give more of the key")
        return matches[0]

    if args.action == "list":
        for entry in local:
            print(f"{entry.kind:<12} {entry.key}  {entry.meta.get('pass') or entry.meta.get('model', '')}")
        if remote is not None:
            for kind in ("runs", "evaluations"):
                for item in remote.entries(kind):
                    print(f"{kind:<12} {item['key']}  (shared)")
    elif args.action == "show":
        for prefix in args.keys:
            entry = find(prefix)
            print(json.dumps(json.loads((entry.path / "manifest.json").read_text()), indent=2))
    elif args.action == "prune":  # orphans always (killed runs' leftovers, blobs of no complete entry); old entries on request
        orphans = cache.prune_orphans()
        print(f"removed {len(orphans)} orphans" + "".join(f"\n  {name}" for name in orphans))
        if args.older_than is not None:
            cutoff = time.time() - args.older_than * 86400
            old = [e for e in local if json.loads((e.path / "manifest.json").read_text())["created"] < cutoff]
            for entry in old:
                cache.discard(entry.path)
            print(f"pruned {len(old)} of {len(local)} entries")
    elif args.action in ("push", "pull"):
        if remote is None:
            raise OliveSystemsError(f"cache {args.action} needs the shared cache", "add --container-name (and --account-name)")
        if args.action == "push":
            pushed = sum(cache.push_entry(entry) for entry in local)
            print(f"pushed {pushed} entries ({len(local) - pushed} were there already)")
        else:
            for key in args.keys:
                kind = "evaluations" if any(i["key"] == key for i in remote.entries("evaluations")) else "runs"
                entry = cache.get(kind, key)
                print(f"{key}: {'pulled' if entry is not None and cache.materialize(entry) else 'not in the shared cache'}")
    else:
        cache.clear()
        print(f"cleared {args.cache_dir}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    print(write_report(args.output_dir))
    return 0


def cmd_systems(args) -> int:
    from .systems.docker_owner import prune_lines

    print("\n".join(prune_lines(everything=args.all)))
    return 0


def cmd_convert_config(args) -> int:
    from .olive_config import convert_file

    text = convert_file(args.config, args.output)
    if args.output:
        print(f"written: {args.output} (run it with olive-systems run --config {args.output})")
    else:
        sys.stdout.write(text)
    return 0


COMMANDS = {"run": cmd_run, "convert-config": cmd_convert_config, "validate": cmd_validate, "schema": cmd_schema, "cache": cmd_cache, "report": cmd_report,
            "systems": cmd_systems}
