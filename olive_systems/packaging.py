"""Packaging the ranked candidates: AzureML model / data assets, or a zip of the output folder.

`engine.packaging_config` entries of type AzureMLModels / AzureMLData turn each candidate into an
azure.ai.ml Model (custom_model) or Data (uri_folder) named `<name>_<device>-<ep>_<rank>`, e.g.
olive_output_model_cpu-cpu_1. The asset is the candidate folder, which holds the model with its
inference_config.json, metrics.json and a model_info.json written here. Without a workspace the
entities' YAML goes to `<output_dir>/azureml/` for `az ml model create -f` / `az ml data create -f`;
with one (live), they are registered. azure.ai.ml is imported only here, inside functions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import OliveSystemsError
from .output import ModelOutput, WorkflowOutput

PACKAGING_TYPES = ["AzureMLModels", "AzureMLData", "Zipfile"]
PACKAGING_ENTRY_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"enum": PACKAGING_TYPES},
        "name": {"type": "string", "default": "olive_output_model", "pattern": "^[A-Za-z0-9_.-]+$"},
        "config": {
            "type": "object",
            "properties": {
                "version": {"type": ["string", "integer"], "default": "1"},
                "description": {"type": "string"},
                "export_in_mlflow_format": {"type": "boolean", "default": False},
            },
            "additionalProperties": False,
        },
    },
    "required": ["type"],
    "additionalProperties": False,
}
PACKAGING_SCHEMA = {"oneOf": [PACKAGING_ENTRY_SCHEMA, {"type": "array", "items": PACKAGING_ENTRY_SCHEMA}],
                    "description": "package the ranked candidates: AzureML models / data assets, or a zip"}


def asset_name(name: str, model: ModelOutput) -> str:
    from .passes.base import Accelerator

    short = Accelerator(model.from_device(), model.from_execution_provider()).short
    return f"{name}_{short}_{model.rank}"


def candidate_folder(model: ModelOutput) -> Path:
    path = Path(model.model_path)
    return path if path.is_dir() else path.parent


def write_model_info(model: ModelOutput) -> Path:
    """model_info.json beside the model: what the asset is and how it scored (no paths, no secrets)."""
    info = {"model_id": model.model_id, "model_type": model.model_type, "rank": model.rank, "device": model.from_device(),
            "execution_provider": model.from_execution_provider(), "from_pass": model.from_pass(),
            "metrics": model.metrics_value, "meets_goals": model.meets_goals}
    target = candidate_folder(model) / "model_info.json"
    target.write_text(json.dumps(info, indent=2, default=str))
    return target


def build_model_assets(workflow_output: WorkflowOutput, entry: dict) -> list:
    """One azure.ai.ml Model or Data entity per ranked candidate, with model_info.json written beside it."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data, Model

    config = entry.get("config") or {}
    if config.get("export_in_mlflow_format"):
        raise OliveSystemsError("export_in_mlflow_format is not supported yet", "leave it false: assets are custom_model folders")
    name, version = entry.get("name", "olive_output_model"), str(config.get("version", "1"))
    assets = []
    for model in workflow_output.get_output_models():
        write_model_info(model)
        fields = dict(name=asset_name(name, model), version=version, path=str(candidate_folder(model)),
                      description=config.get("description") or f"olive-systems candidate {model.model_id} (rank {model.rank})",
                      tags={"device": model.from_device(), "execution_provider": model.from_execution_provider(),
                            "rank": str(model.rank), **{k: str(v) for k, v in model.metrics_value.items()}})
        if entry["type"] == "AzureMLModels":
            assets.append(Model(type=AssetTypes.CUSTOM_MODEL, **fields))
        else:
            assets.append(Data(type=AssetTypes.URI_FOLDER, **fields))
    return assets


def write_asset_yaml(assets: list, folder: Path) -> list[Path]:
    """Each entity dumped by the SDK, with its local path kept as given (the CLI uploads it)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for asset in assets:
        document = json.loads(json.dumps(asset._to_dict(), default=str))
        document["path"] = str(asset.path)
        target = folder / f"{asset.name}.yaml"
        target.write_text(yaml.safe_dump(document, sort_keys=False))
        written.append(target)
    return written


def package(workflow_output: WorkflowOutput, entries, output_dir: Path, ml_client=None) -> list[Path]:
    """Run every packaging entry. Assets are registered with ml_client when given, else written as YAML."""
    produced: list[Path] = []
    for entry in [entries] if isinstance(entries, dict) else entries or []:
        if entry["type"] == "Zipfile":
            archive = shutil.make_archive(str(output_dir.parent / entry.get("name", output_dir.name)), "zip", output_dir)
            produced.append(Path(archive))
            continue
        assets = build_model_assets(workflow_output, entry)
        if ml_client is None:
            produced.extend(write_asset_yaml(assets, output_dir / "azureml"))
            continue
        operations = ml_client.models if entry["type"] == "AzureMLModels" else ml_client.data
        for asset in assets:
            try:
                operations.create_or_update(asset)
            except Exception as exc:
                from .systems.azureml import map_failure

                raise map_failure(exc) from None
    return produced
