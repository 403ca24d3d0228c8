"""AzureMLModels / AzureMLData packaging: one azure.ai.ml asset per ranked candidate.

Each candidate becomes a Model (custom_model) or Data (uri_folder) named `<name>_<device>-<ep>_<rank>`,
e.g. olive_output_model_cpu-cpu_1. The asset is the candidate folder, which holds the model with its
inference_config.json, metrics.json and a model_info.json written here. With export_in_mlflow_format
an ONNX candidate also gets `mlflow_model/` in its folder: AzureMLModels registers that folder as an
mlflow_model asset, AzureMLData keeps the uri_folder (which now includes it). azure.ai.ml is
imported only inside functions.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..output import ModelOutput, WorkflowOutput
from .mlflow import MLFLOW_FOLDER, is_onnx, write_mlflow_model


def asset_name(name: str, model: ModelOutput) -> str:
    from ..passes.base import Accelerator

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
    mlflow = bool(config.get("export_in_mlflow_format"))
    name, version = entry["name"], str(config.get("version", "1"))
    assets = []
    for model in workflow_output.get_output_models():
        write_model_info(model)
        folder = candidate_folder(model)
        mlflow_folder = write_mlflow_model(model, folder / MLFLOW_FOLDER) if mlflow and is_onnx(model) else None
        fields = dict(name=asset_name(name, model), version=version, path=str(folder),
                      description=config.get("description") or f"olive-systems candidate {model.model_id} (rank {model.rank})",
                      tags={"device": model.from_device(), "execution_provider": model.from_execution_provider(),
                            "rank": str(model.rank), **{k: str(v) for k, v in model.metrics_value.items()}})
        if entry["type"] == "AzureMLModels" and mlflow_folder is not None:
            # An mlflow_model asset must be the MLflow folder itself (MLmodel at its root).
            assets.append(Model(type=AssetTypes.MLFLOW_MODEL, **dict(fields, path=str(mlflow_folder))))
        elif entry["type"] == "AzureMLModels":
            assets.append(Model(type=AssetTypes.CUSTOM_MODEL, **fields))
        else:
            assets.append(Data(type=AssetTypes.URI_FOLDER, **fields))
    return assets


ASSET_FOLDERS = {"AzureMLModels": "models", "AzureMLData": "data"}


def write_asset_yaml(assets: list, folder: Path) -> list[Path]:
    """Each entity dumped by the SDK, with its local path kept as given (the CLI uploads it). The caller
    gives each packaging type its own folder: a model and a data asset of one name must not share a file."""
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


def register_assets(assets: list, entry: dict, ml_client) -> None:
    """Register through the workspace client; SDK failures become the AzureML system's clear errors."""
    operations = ml_client.models if entry["type"] == "AzureMLModels" else ml_client.data
    for asset in assets:
        try:
            operations.create_or_update(asset)
        except Exception as exc:
            from ..systems.azureml import map_failure

            raise map_failure(exc) from None
