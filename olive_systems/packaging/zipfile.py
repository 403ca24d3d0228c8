"""Zipfile packaging: `<output_dir>/<name>.zip` in the seed's layout.

    CandidateModels/<device>-<ep>/BestCandidateModel_<k>/   k = 1.. in rank order within the accelerator
        model.onnx and its side files (external data, tokenizer, config)
        configurations.json    the pass run history: model id -> pass run record, input model -> null
        metrics.json           the input model's metrics and this model's
        inference_config.json  execution provider and session options (ONNX models only)
        mlflow_model/          with export_in_mlflow_format (ONNX models only)
    SampleCode/                Python, C++ and C# running the best ONNX candidate (samples.py)
    ONNXRuntimePackages/       the wheel of each ONNX Runtime package and version that scored them
    models_rank.json           every model across accelerators in rank order, paths inside the zip

The zip is written under a temporary name and renamed into place, so a failure (or a kill)
never leaves a half-written <name>.zip, and an earlier one stays whole until the new one is done.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Callable

from ..errors import OliveSystemsError
from ..models import folder_files
from ..output import ModelOutput, WorkflowOutput
from ..passes.base import Accelerator
from .azureml import candidate_folder
from .mlflow import MLFLOW_FOLDER, is_onnx, write_mlflow_model
from .ort_packages import find_wheel, pip_command, runtime_of
from .samples import is_generative_candidate, render_samples

# Written beside each model by the output folder and AzureML packaging; the zip writes its own.
CANDIDATE_METADATA = {"inference_config.json", "run_history.json", "metrics.json", "model_info.json"}
# Already-compressed files gain nothing from deflate.
STORED_SUFFIXES = (".whl", ".zip")


def write_zipfile(workflow_output: WorkflowOutput, entry: dict, output_dir: Path,
                  warn: Callable[[str], None]) -> Path:
    name = entry["name"]
    mlflow = bool((entry.get("config") or {}).get("export_in_mlflow_format"))
    target = output_dir / f"{name}.zip"
    staging = output_dir / f".{name}.zip.tmp-{uuid.uuid4().hex[:8]}"
    models = workflow_output.get_output_models()
    layout = candidate_layout(models)
    try:
        with tempfile.TemporaryDirectory(prefix="olive-package-") as scratch, \
                zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED, allowZip64=True, strict_timestamps=False) as archive:
            scratch = Path(scratch)
            for model in models:
                _add_candidate(archive, workflow_output, model, layout[model.model_id], mlflow, scratch)
            best = next((m for m in models if is_onnx(m)), None)
            samples = render_samples(best, layout[best.model_id] if best else "", runtime_of(best) if best else None)
            for path, text in samples.items():
                archive.writestr(f"SampleCode/{path}", text)
            _add_runtime_packages(archive, [m for m in models if is_onnx(m)], scratch, warn)
            archive.writestr("models_rank.json", json.dumps(models_rank(workflow_output, models, layout, output_dir),
                                                            indent=2, default=str))
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)  # still there only when something failed
    return target


def candidate_layout(models: list[ModelOutput]) -> dict[str, str]:
    """model id -> CandidateModels/<device>-<ep>/BestCandidateModel_<k>, k counting within each accelerator."""
    counts: dict[str, int] = {}
    layout = {}
    for model in models:  # already in global rank order
        short = Accelerator(model.from_device(), model.from_execution_provider()).short
        counts[short] = counts.get(short, 0) + 1
        layout[model.model_id] = f"CandidateModels/{short}/BestCandidateModel_{counts[short]}"
    return layout


def _add_candidate(archive: zipfile.ZipFile, workflow_output: WorkflowOutput, model: ModelOutput, prefix: str,
                   mlflow: bool, scratch: Path) -> None:
    folder = candidate_folder(model)
    model_files = [p for p in folder_files(folder) if p.relative_to(folder).parts[0] != MLFLOW_FOLDER
                   and not (p.parent == folder and p.name in CANDIDATE_METADATA)]
    if not Path(model.model_path).exists() or not model_files:
        raise OliveSystemsError(f"packaging: candidate {model.model_id} lacks its model ({model.model_path})",
                                "run the recipe again: its output folder was changed after the run")
    for path in model_files:
        _write(archive, path, f"{prefix}/{path.relative_to(folder).as_posix()}")
    _write_json(archive, f"{prefix}/configurations.json", workflow_output.trace_back_run_history(model.model_id))
    _write_json(archive, f"{prefix}/metrics.json", {"input_model_metrics": input_metrics_for(workflow_output, model),
                                                     "metrics": model.metrics})
    if is_onnx(model):
        _write_json(archive, f"{prefix}/inference_config.json", model.get_inference_config())
        if mlflow:
            exported = write_mlflow_model(model, scratch / model.model_id / MLFLOW_FOLDER)
            for path in folder_files(exported):
                _write(archive, path, f"{prefix}/{MLFLOW_FOLDER}/{path.relative_to(exported).as_posix()}")


def input_metrics_for(workflow_output: WorkflowOutput, model: ModelOutput) -> dict | None:
    """The input model's metrics on the model's accelerator (a run over several keeps one set each)."""
    by_accelerator = workflow_output.to_dict().get("input_model_metrics_by_accelerator") or {}
    short = Accelerator(model.from_device(), model.from_execution_provider()).short
    return by_accelerator.get(short, workflow_output.get_input_model_metrics())


def _add_runtime_packages(archive: zipfile.ZipFile, onnx_models: list[ModelOutput], scratch: Path,
                          warn: Callable[[str], None]) -> None:
    if not onnx_models:
        archive.writestr("ONNXRuntimePackages/README.txt",
                         "No candidate is an ONNX model: no ONNX Runtime package belongs here.\n")
        return
    wanted = []
    for model in onnx_models:
        runtime = runtime_of(model)
        key = (runtime["package"], runtime["version"]) if runtime else None
        if key not in wanted:
            wanted.append(key)
    if any(is_generative_candidate(model) for model in onnx_models):  # generate.py runs them through genai
        from importlib import metadata

        try:
            wanted.append(("onnxruntime-genai", metadata.version("onnxruntime-genai")))
        except metadata.PackageNotFoundError:
            wanted.append(("onnxruntime-genai", ""))
    missing = []
    for key in wanted:
        if key is None:
            missing.append("no ONNX Runtime package is installed here and the run did not record which one scored the "
                           "candidates: install the onnxruntime package for their execution provider")
            continue
        package, version = key
        wheel = find_wheel(package, version, scratch / "wheels")
        if wheel is None:
            missing.append(f"{package}=={version}: get it with `{pip_command(package, version)}`")
        else:
            _write(archive, wheel, f"ONNXRuntimePackages/{wheel.name}")
    if missing:
        for line in missing:
            warn(f"packaging: ONNXRuntimePackages lacks a wheel: {line}")
        archive.writestr("ONNXRuntimePackages/README.txt",
                         "The ONNX Runtime wheel(s) the candidates were evaluated with could not be found in "
                         "images/.wheels, the pip cache or the package index when this package was made:\n\n"
                         + "".join(f"- {line}\n" for line in missing))


def models_rank(workflow_output: WorkflowOutput, models: list[ModelOutput], layout: dict[str, str],
                output_dir: Path) -> list[dict]:
    """The output folder's models_rank.json, with each model path pointing inside the zip."""
    by_id = {m.model_id: m for m in models}
    written = output_dir / "models_rank.json"
    entries = json.loads(written.read_text()) if written.is_file() else []
    if sorted(e.get("model_id") for e in entries) != sorted(by_id):  # not this output's file: made the same way
        entries = [{"rank": m.rank, "model_id": m.model_id, "model_config": m.model_config, "metrics": m.metrics,
                    "meets_goals": m.meets_goals} for m in models]
    ranked = []
    for entry in copy.deepcopy(entries):
        model = by_id[entry["model_id"]]
        inner = layout[model.model_id] + ("/" + Path(model.model_path).name if not Path(model.model_path).is_dir() else "")
        entry.setdefault("model_config", {}).setdefault("config", {})["model_path"] = inner
        ranked.append(entry)
    return ranked


def _write(archive: zipfile.ZipFile, path: Path, name: str) -> None:
    compression = zipfile.ZIP_STORED if name.endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
    archive.write(path, name, compress_type=compression)


def _write_json(archive: zipfile.ZipFile, name: str, value) -> None:
    archive.writestr(name, json.dumps(value, indent=2, default=str))
