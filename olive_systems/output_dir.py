"""The output folder: one sub-folder per candidate, models_rank.json, metrics, run history and report.html.

The folder is built beside the target and swapped in at the end, so an interrupted run leaves
the previous results whole and never a half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .models import copy_tree
from .output import WorkflowOutput
from .report import write_report


def _model_config(model, model_path: Path) -> dict:
    return {
        "type": "ONNXModel" if model.type == "OnnxModel" else "HfModel",
        "config": {
            "model_path": str(model_path),
            "inference_settings": model.inference_settings,
            "use_ort_extensions": False,
            "model_attributes": model.attributes,
        },
    }


def check_output_dir(output_dir: Path) -> None:
    """Only an empty folder or an earlier run's output may be replaced: never a user's own folder."""
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "workflow_output.json").exists():
        from .errors import RecipeError

        raise RecipeError(f"output_dir '{output_dir}' holds files that are not an olive-systems output",
                          "choose an empty or new engine.output_dir")


def write_output_dir(output_dir: Path, ranked: list[dict], summary: dict) -> WorkflowOutput:
    check_output_dir(output_dir)
    staging = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        models = []
        for candidate in ranked:
            model = candidate["model"]
            folder = staging / candidate["model_id"]
            copy_tree(Path(model.path), folder)
            final_folder = output_dir / candidate["model_id"]
            model_path = final_folder / "model.onnx" if model.type == "OnnxModel" else final_folder
            settings = model.inference_settings or {"execution_provider": [[candidate["execution_provider"], {}]],
                                                    "session_options": {}}
            record = {
                "model_id": candidate["model_id"],
                "model_path": str(model_path),
                "model_type": model.type.lower(),
                "model_config": _model_config(model.relocated(final_folder, inference_settings=settings), model_path),
                "metrics": candidate["metrics"],
                "device": candidate["device"],
                "execution_provider": candidate["execution_provider"],
                "rank": candidate["rank"],
                "meets_goals": candidate["meets_goals"],
                "missed_goals": candidate["missed_goals"],
                "pareto": candidate.get("pareto", False),
                "runtime": candidate.get("runtime"),
                "system": candidate.get("system"),
                "search_point": candidate.get("search_point") or {},
                "run_history": candidate["history"],
            }
            _dump(folder / "inference_config.json", settings)
            _dump(folder / "run_history.json", candidate["history"])
            _dump(folder / "metrics.json", {"input_model_metrics": summary["input_model_metrics"],
                                            "metrics": candidate["metrics"]})
            models.append(record)
        _dump(staging / "models_rank.json", [
            {"rank": m["rank"], "model_id": m["model_id"], "model_config": m["model_config"], "metrics": m["metrics"],
             "meets_goals": m["meets_goals"]} for m in models
        ])
        _dump(staging / "input_model_metrics.json", summary["input_model_metrics"])
        data = {**summary, "models": models, "output_dir": str(output_dir)}
        _dump(staging / "workflow_output.json", data)
        write_report(staging, data)  # in staging, so the report is swapped in with the results it shows
        _swap_in(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return WorkflowOutput(data)


def _dump(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, default=str))


def _swap_in(staging: Path, output_dir: Path) -> None:
    old = None
    if output_dir.exists():
        old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output_dir, old)
    os.rename(staging, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
