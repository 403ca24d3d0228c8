"""The Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .output import WorkflowOutput


def run(run_config, output_dir: str | Path | None = None, cache_dir: str | Path | None = None,
        on_event: Callable[[dict], None] | None = None, account_name: str | None = None,
        container_name: str | None = None, max_concurrency: int | None = None) -> WorkflowOutput:
    """Run a recipe (path to YAML/JSON, or a dict) and return its ranked results. account_name and
    container_name name an Azure Blob container as the shared cache (as in the recipe's
    engine.shared_cache); max_concurrency overrides engine.max_concurrency."""
    from .engine import Engine
    from .recipe import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe(run_config), output_dir, cache_dir, account_name=account_name,
                             container_name=container_name, max_concurrency=max_concurrency)
    return Engine(recipe, on_event).run()
