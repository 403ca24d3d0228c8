"""The output folder: one sub-folder per candidate, models_rank.json, metrics, run history and report.html.

The folder is built beside the target and swapped in at the end, so an interrupted run leaves
the previous results whole and never a half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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
    """Before any work: the output can be written (it is staged beside output_dir and renamed in, so
    the nearest existing folder above it must take new files), and only an empty folder or an
    earlier run's output may be replaced: never a user's own folder."""
    from .errors import RecipeError

    if output_dir.exists() and not output_dir.is_dir():
        raise RecipeError(f"output_dir '{output_dir}' is a file", "choose a folder for engine.output_dir (--output-dir)")
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "workflow_output.json").exists():
        raise RecipeError(f"output_dir '{output_dir}' holds files that are not an olive-systems output",
                          "choose an empty or new engine.output_dir")
    above = output_dir.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise RecipeError(f"output_dir '{output_dir}' cannot be created: '{above}' is a file",
                          "choose another engine.output_dir (--output-dir)")
    try:  # permissions alone do not tell (root, read-only mounts): try it
        os.rmdir(tempfile.mkdtemp(prefix=".olive-systems-probe-", dir=above))
    except OSError as exc:
        raise RecipeError(f"output_dir '{output_dir}' cannot be written: {exc.strerror} in '{above}'",
                          "choose a folder you can write to for engine.output_dir (--output-dir)") from None


def failure_report_dir(output_dir: Path) -> Path:
    """Where a run without a single candidate writes its report when output_dir holds earlier results."""
    return output_dir.with_name(f"{output_dir.name}.failed")


def previous_output(output_dir: Path) -> dict | None:
    """What an earlier run left in output_dir: {output_dir, candidates, written (epoch s)}, or None."""
    record = output_dir / "workflow_output.json"
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return {"output_dir": str(output_dir), "candidates": len(data.get("models") or []), "written": record.stat().st_mtime}


def write_output_dir(output_dir: Path, ranked: list[dict], summary: dict) -> WorkflowOutput:
    check_output_dir(output_dir)
    previous = previous_output(output_dir)
    if not ranked and previous and previous["candidates"]:
        # Never trade good results for a page of failures: those go beside them.
        summary = {**summary, "kept_output": previous}
        output_dir = failure_report_dir(output_dir)
        check_output_dir(output_dir)
    elif previous:
        summary = {**summary, "replaced_output": previous}
    staging = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        summary = {**summary, "failures": [_with_log(f, staging, output_dir) for f in summary.get("failures", [])]}
        models = []
        for candidate in ranked:
            model = candidate["model"]
            folder = staging / candidate["model_id"]
            copy_tree(Path(model.path), folder)
            final_folder = output_dir / candidate["model_id"]
            # a split model (passes/split.py) is a folder of parts: its path is the folder
            single = model.type == "OnnxModel" and (Path(model.path) / "model.onnx").is_file()
            model_path = final_folder / "model.onnx" if single else final_folder
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
             "meets_goals": m["meets_goals"], "search_point": m["search_point"]} for m in models
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


def _with_log(failure: dict, staging: Path, output_dir: Path) -> dict:
    """A failed job's whole log goes into the output's logs/ folder, beside the report that names it."""
    source = failure.get("log_file")
    if not source or not Path(source).is_file():
        return failure
    name = f"{failure['model_id'].replace(' ', '_').replace(os.sep, '_')}.log"
    (staging / "logs").mkdir(exist_ok=True)
    shutil.copy2(source, staging / "logs" / name)
    return {**failure, "log_file": str(output_dir / "logs" / name)}


def _dump(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, default=str))


def _swap_in(staging: Path, output_dir: Path) -> None:
    old = None
    if output_dir.exists():
        old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output_dir, old)
    try:
        os.rename(staging, output_dir)
    except BaseException:
        if old is not None:  # the earlier output goes back where it was
            os.rename(old, output_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
