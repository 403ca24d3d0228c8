"""Packaging the ranked candidates: a zip in the seed's layout, AzureML model / data assets, MLflow.

`engine.packaging_config` is one entry or a list. Each entry's `type` picks what is made:

- Zipfile (zipfile.py): `<output_dir>/<name>.zip` with CandidateModels/, SampleCode/,
  ONNXRuntimePackages/ and models_rank.json.
- AzureMLModels / AzureMLData (azureml.py): one Model (custom_model, or mlflow_model) or Data
  (uri_folder) per candidate, named `<name>_<device>-<ep>_<rank>`; registered through a workspace
  client when one is given, else written as YAML to `<output_dir>/azureml/`.

`config.export_in_mlflow_format` adds MLflow model folders (mlflow.py); it needs the `mlflow` extra
and is checked before any work starts (check_packaging, which the engine may call before the run).
Heavy libraries (azure.ai.ml, mlflow, onnx) are imported
only inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..output import WorkflowOutput
from .azureml import ASSET_FOLDERS, asset_name, build_model_assets, candidate_folder, register_assets, write_asset_yaml, write_model_info
from .mlflow import require_mlflow

PACKAGING_TYPES = ["AzureMLModels", "AzureMLData", "Zipfile"]
DEFAULT_NAME = "OutputModels"  # Olive's default, so recipes moved over keep their names
PACKAGING_ENTRY_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"enum": PACKAGING_TYPES},
        "name": {"type": "string", "default": DEFAULT_NAME, "pattern": "^[A-Za-z0-9_.-]+$"},
        "config": {
            "type": "object",
            "properties": {
                "version": {"type": ["string", "integer"], "default": "1"},
                "description": {"type": "string"},
                "export_in_mlflow_format": {"type": "boolean", "default": False,
                                            "description": "also write MLflow model folders (needs olive-systems[mlflow])"},
            },
            "additionalProperties": False,
        },
    },
    "required": ["type"],
    "additionalProperties": False,
}
PACKAGING_SCHEMA = {"oneOf": [PACKAGING_ENTRY_SCHEMA, {"type": "array", "items": PACKAGING_ENTRY_SCHEMA}],
                    "description": "package the ranked candidates: a zip, AzureML models / data assets"}

__all__ = ["PACKAGING_SCHEMA", "PACKAGING_ENTRY_SCHEMA", "PACKAGING_TYPES", "package", "check_packaging", "asset_name", "candidate_folder",
           "write_model_info", "build_model_assets", "write_asset_yaml"]


def _entries(entries) -> list[dict]:
    """Entries as a list, each with its name filled in."""
    return [{"name": DEFAULT_NAME, **entry} for entry in ([entries] if isinstance(entries, dict) else entries or [])]


def check_packaging(entries) -> None:
    """Refuse what packaging cannot do here (mlflow missing): callable before a run starts."""
    if any((entry.get("config") or {}).get("export_in_mlflow_format") for entry in _entries(entries)):
        require_mlflow()


def package(workflow_output: WorkflowOutput, entries, output_dir: Path, ml_client=None,
            warn: Callable[[str], None] | None = None) -> list[Path]:
    """Run every packaging entry; returns the files written (zips, asset YAML).

    Assets are registered with ml_client when given, else written as YAML. `warn` receives what
    went wrong without stopping the packaging (e.g. an ONNX Runtime wheel that could not be found).
    """
    from .zipfile import write_zipfile

    warn = warn or (lambda message: None)
    entries = _entries(entries)
    check_packaging(entries)  # before anything is written: one clear error, not a half-done packaging
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    produced: list[Path] = []
    for entry in entries:
        if entry["type"] == "Zipfile":
            produced.append(write_zipfile(workflow_output, entry, output_dir, warn))
            continue
        assets = build_model_assets(workflow_output, entry)
        if ml_client is None:
            produced.extend(write_asset_yaml(assets, output_dir / "azureml" / ASSET_FOLDERS[entry["type"]]))
        else:
            register_assets(assets, entry, ml_client)
    return produced
