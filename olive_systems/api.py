"""The Python API."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .output import WorkflowOutput


def run(run_config, output_dir: str | Path | None = None, cache_dir: str | Path | None = None,
        on_event: Callable[[dict], None] | None = None, account_name: str | None = None,
        container_name: str | None = None, max_concurrency: int | None = None, *, setup: bool = False,
        packages: bool = False, package_config: str | Path | dict | None = None,
        tempdir: str | Path | None = None, log_level: int | None = None) -> WorkflowOutput | list[str]:
    """Run a recipe (path to YAML/JSON, or a dict) and return its ranked results.

    account_name and container_name name an Azure Blob container as the shared cache (as in the
    recipe's engine.shared_cache); max_concurrency overrides engine.max_concurrency.

    packages=True runs nothing: it returns the packages the recipe's passes, data, search, systems
    and target EPs need (pinned as olive-systems pins them; package_config, a file or dict, adds to
    or overrides them, see olive_systems/workflow_packages.py) and writes them to
    <output_dir>/requirements.txt. setup=True runs nothing either: it pip-installs those this
    environment lacks and returns them. tempdir is the root of every temporary file and folder of
    the run (tempfile and TMPDIR, for the jobs too). log_level 0-4 (DEBUG, INFO, WARNING, ERROR,
    CRITICAL) sets the olive_systems loggers; None leaves logging as the application set it.
    """
    from .engine import Engine
    from .recipe import apply_overrides, load_recipe

    if log_level is not None:
        from .workflows.common import configure_logging

        configure_logging(log_level)
    if package_config is not None and not (setup or packages):
        from .errors import RecipeError

        raise RecipeError("package_config names the packages of setup or packages, and neither is asked for",
                          "add setup=True (install them) or packages=True (list them), or drop package_config")
    recipe = apply_overrides(load_recipe(run_config), output_dir, cache_dir, account_name=account_name,
                             container_name=container_name, max_concurrency=max_concurrency)
    if setup or packages:
        from . import workflow_packages

        requirements = workflow_packages.recipe_requirements(recipe, package_config)
        if packages:
            workflow_packages.write_requirements(requirements, Path(recipe["engine"]["output_dir"]))
        return workflow_packages.install(requirements) if setup else requirements
    with temporary_root(tempdir), kept_recipe_file(run_config, recipe):
        return Engine(recipe, on_event).run()


@contextmanager
def temporary_root(tempdir):
    """tempfile's folder, and TMPDIR for the processes the run starts, set to tempdir for the run."""
    if tempdir is None:
        yield
        return
    import os
    import tempfile

    root = Path(tempdir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        from .errors import RecipeError

        raise RecipeError(f"tempdir {root} is a file", "give a folder (it is made if missing)")
    root.mkdir(parents=True, exist_ok=True)
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(root), str(root)
    try:
        yield
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]


@contextmanager
def kept_recipe_file(source, recipe: dict):
    """A recipe file inside the output folder its own run replaces (where the workflow functions'
    save_config_file writes it) is put back into the new output folder, so that editing and running
    it again never loses it."""
    kept = None
    if isinstance(source, (str, Path)):
        path = Path(source).resolve()
        if path.is_file() and Path(recipe["engine"]["output_dir"]).resolve() in path.parents:
            kept = (path, path.read_bytes())
    try:
        yield
    finally:
        if kept is not None and not kept[0].exists():
            kept[0].parent.mkdir(parents=True, exist_ok=True)
            kept[0].write_bytes(kept[1])
