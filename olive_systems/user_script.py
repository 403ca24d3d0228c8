"""Functions from a user's Python script named in a recipe (model_script, user_script)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from .errors import RecipeError


@lru_cache(maxsize=None)
def _load_module(script: str):
    spec = importlib.util.spec_from_file_location(f"olive_user_{abs(hash(script))}", script)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot load user script '{script}'", "point user_script at a .py file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_function(script: str | Path | None, name: str, where: str):
    if not script:
        raise RecipeError(f"{where}: '{name}' needs a user script", "add user_script (or model_script) to the recipe")
    module = _load_module(str(script))
    func = getattr(module, name, None)
    if not callable(func):
        raise RecipeError(f"{where}: '{name}' is not a function in {script}", f"define def {name}(...) in {script}")
    return func
