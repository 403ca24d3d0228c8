"""ONNX Runtime sessions built from a model's inference settings, refusing silent EP fallback."""

from __future__ import annotations

from pathlib import Path

from .errors import OliveSystemsError

EXECUTION_MODES = {"ORT_SEQUENTIAL": 0, "ORT_PARALLEL": 1}
GRAPH_OPT_LEVELS = {0: "ORT_DISABLE_ALL", 1: "ORT_ENABLE_BASIC", 2: "ORT_ENABLE_EXTENDED", 99: "ORT_ENABLE_ALL"}


# Distributions that provide `import onnxruntime`; an EP build before the plain one, which may sit beside it.
ORT_DISTRIBUTIONS = ("onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-qnn",
                     "onnxruntime-training", "onnxruntime")


def installed_runtime() -> dict | None:
    """The ONNX Runtime wheel installed here (they all import as onnxruntime), as {"package", "version"}."""
    from importlib import metadata

    for name in ORT_DISTRIBUTIONS:
        try:
            return {"package": name, "version": metadata.version(name)}
        except metadata.PackageNotFoundError:
            continue
    return None


def default_inference_settings(execution_provider: str) -> dict:
    return {"execution_provider": [[execution_provider, {}]], "session_options": {}}


def served_provider(settings: dict | None, target: str) -> str:
    """The EP a model is served on: the one its inference settings name (session tuning with
    force_evaluate_other_eps may have chosen another than the target's), else the target's."""
    entries = (settings or {}).get("execution_provider") or []
    if not entries:
        return target
    return entries[0][0] if isinstance(entries[0], (list, tuple)) else entries[0]  # [name, options] or a name


def session_options(settings: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    values = (settings or {}).get("session_options", {})
    if "intra_op_num_threads" in values:
        options.intra_op_num_threads = int(values["intra_op_num_threads"])
    if "inter_op_num_threads" in values:
        options.inter_op_num_threads = int(values["inter_op_num_threads"])
    if "execution_mode" in values:
        options.execution_mode = ort.ExecutionMode(int(values["execution_mode"]))
    if "graph_optimization_level" in values:
        level = GRAPH_OPT_LEVELS[int(values["graph_optimization_level"])]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    for key, value in (values.get("extra_session_config") or {}).items():
        options.add_session_config_entry(key, str(value))
    if values.get("enable_profiling"):  # session tuning's profile of its fastest setting
        options.enable_profiling = True
        options.profile_file_prefix = str(values.get("profile_file_prefix") or "ort_profile")
    options.log_severity_level = 3
    return options


def create_session(model_path: Path, settings: dict | None, execution_provider: str, intra_op_threads: int | None = None):
    """A session on the requested EP. ONNX Runtime falls back to CPU silently; we make it an error.
    intra_op_threads overrides the settings' thread count (a job's share of a shared machine)."""
    import onnxruntime as ort

    settings = settings or default_inference_settings(execution_provider)
    if intra_op_threads:
        settings = {**settings, "session_options": {**settings.get("session_options", {}),
                                                    "intra_op_num_threads": intra_op_threads}}
    available = ort.get_available_providers()
    if execution_provider not in available:
        raise OliveSystemsError(
            f"execution provider {execution_provider} is not in this onnxruntime build (has {available})",
            "install the onnxruntime package for that EP or run in its docker image",
        )
    providers = [(execution_provider, dict(_provider_options(settings, execution_provider)))]
    session = ort.InferenceSession(str(model_path), sess_options=session_options(settings), providers=providers)
    used = session.get_providers()
    if not used or used[0] != execution_provider:
        raise OliveSystemsError(
            f"session asked for {execution_provider} but runs on {used}",
            "check the EP's libraries (CUDA, OpenVINO) are installed and visible",
        )
    return session


def _provider_options(settings: dict, execution_provider: str) -> dict:
    for entry in settings.get("execution_provider", []):
        if isinstance(entry, (list, tuple)) and entry[0] == execution_provider and len(entry) > 1:
            return entry[1] or {}
    return {}


INPUT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
                "tensor(float16)": "float16", "tensor(bool)": "bool"}


def input_dtype(arg):
    """The numpy dtype of a session input; a type made-up inputs cannot take is an error, not float32."""
    import numpy as np

    if arg.type not in INPUT_DTYPES:
        raise OliveSystemsError(f"input '{arg.name}' is of type {arg.type}, which made-up inputs do not cover "
                                f"({', '.join(INPUT_DTYPES)})", "time the model with a data config that feeds real inputs")
    return np.dtype(INPUT_DTYPES[arg.type])


def dummy_feed(session, batch_size: int = 1, sequence_length: int = 128) -> dict:
    """Inputs of the session's declared types; symbolic dims become batch then sequence length (a
    past_sequence_length 0)."""
    import numpy as np

    feed = {}
    for arg in session.get_inputs():
        symbolic = iter([batch_size, sequence_length])
        # A decoder's KV cache: an empty past, so the mask's total length is the sequence (a prefill).
        shape = [dim if isinstance(dim, int) else 0 if "past" in str(dim) else next(symbolic, 1) for dim in arg.shape]
        dtype = input_dtype(arg)
        feed[arg.name] = np.ones(shape, dtype=dtype) if "mask" in arg.name else np.zeros(shape, dtype=dtype)
    return feed

