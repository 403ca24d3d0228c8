"""The Python API."""

from __future__ import annotations

from contextlib import contextmanager
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
    with kept_recipe_file(run_config, recipe):
        return Engine(recipe, on_event).run()


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
