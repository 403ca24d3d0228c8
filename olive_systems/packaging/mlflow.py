"""MLflow model folders for export_in_mlflow_format (the `mlflow` extra: mlflow-skinny is enough).

`mlflow.onnx.save_model` writes the candidate with its EP and session options in the MLmodel file,
so `mlflow.pyfunc.load_model` serves it as tuned. Only ONNX candidates have an MLflow form here.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from ..errors import OliveSystemsError
from ..output import ModelOutput

MLFLOW_FOLDER = "mlflow_model"
# Our session options keep ONNX Runtime's enum values; MLflow's MLmodel spells the execution mode.
EXECUTION_MODES = {0: "sequential", 1: "parallel"}


def require_mlflow() -> None:
    try:
        import mlflow.onnx  # noqa: F401
    except ImportError as exc:
        raise OliveSystemsError(f"export_in_mlflow_format needs mlflow, which is not installed ({exc})",
                                "pip install olive-systems[mlflow]") from None


def is_onnx(model: ModelOutput) -> bool:
    return model.model_type.lower() == "onnxmodel" and Path(model.model_path).suffix == ".onnx"


def mlflow_settings(inference_config: dict | None) -> tuple[list, dict]:
    """(onnx_execution_providers, onnx_session_options) in the form mlflow.onnx.save_model takes."""
    inference_config = inference_config or {}
    providers = []
    for entry in inference_config.get("execution_provider") or []:
        name, options = (entry[0], entry[1] if len(entry) > 1 else {}) if isinstance(entry, (list, tuple)) else (entry, {})
        providers.append((name, dict(options)) if options else name)
    options = {}
    for key, value in (inference_config.get("session_options") or {}).items():
        if value is None:
            continue
        if key == "execution_mode":
            value = EXECUTION_MODES.get(int(value), "sequential") if not isinstance(value, str) else value.lower()
        options[key] = value
    return providers or ["CPUExecutionProvider"], options


def write_mlflow_model(model: ModelOutput, dest: Path) -> Path:
    """An MLflow model folder for an ONNX candidate at dest (replaced whole; never left half-written)."""
    import mlflow
    import mlflow.onnx
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from .ort_packages import runtime_of

    providers, session_options = mlflow_settings(model.get_inference_config())
    runtime = runtime_of(model) or {"package": "onnxruntime", "version": None}
    requirements = [f"mlflow=={mlflow.__version__}", f"onnx=={onnx.__version__}",
                    f"{runtime['package']}=={runtime['version']}" if runtime["version"] else runtime["package"]]
    path = Path(model.model_path)
    proto = onnx.load(str(path), load_external_data=False)
    # Weights kept outside model.onnx (models past protobuf's 2 GB limit need that) stay outside in the copy.
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    load_external_data_for_model(proto, str(path.parent))
    staging = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        mlflow.onnx.save_model(proto, str(staging), onnx_execution_providers=providers,
                               onnx_session_options=session_options or None, pip_requirements=requirements,
                               save_as_external_data=external,
                               metadata={"olive_systems_model_id": model.model_id, "rank": model.rank})
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
