"""The Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .output import WorkflowOutput


def run(run_config, output_dir: str | Path | None = None, cache_dir: str | Path | None = None,
        on_event: Callable[[dict], None] | None = None) -> WorkflowOutput:
    """Run a recipe (path to YAML/JSON, or a dict) and return its ranked results."""
    from .engine import Engine
    from .recipe import load_recipe

    recipe = load_recipe(run_config)
    if output_dir is not None:
        recipe["engine"]["output_dir"] = str(output_dir)
    if cache_dir is not None:
        recipe["engine"]["cache_dir"] = str(cache_dir)
    return Engine(recipe, on_event).run()
