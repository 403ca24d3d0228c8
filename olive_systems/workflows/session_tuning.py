"""tune_session_params: time ONNX Runtime session settings (threads, execution mode, graph level,
IOBinding, execution providers) on a model and keep the fastest as its inference settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from ..errors import PassError, RecipeError
from .common import (LogLevel, WorkflowOutput, engine_section, exported_first, input_model, refuse, refuse_unhonoured,
                     run_workflow)

DEVICE_PROVIDERS = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider", "npu": "QNNExecutionProvider"}
EXECUTION_MODE_NAMES = {0: "ORT_SEQUENTIAL", 1: "ORT_PARALLEL"}


def tune_session_params(
    model_name_or_path: str,
    *,
    task: str = "text-generation-with-past",
    trust_remote_code: bool = False,
    output_path: str = "tuned-params",
    cpu_cores: int | None = None,
    io_bind: bool = False,
    enable_cuda_graph: bool = False,
    execution_mode_list: list[int] | None = None,
    opt_level_list: list[int] | None = None,
    trt_fp16_enable: bool = False,
    intra_thread_num_list: list[int] | None = None,
    inter_thread_num_list: list[int] | None = None,
    extra_session_config: str | dict | None = None,
    disable_force_evaluate_other_eps: bool = False,
    enable_profiling: bool = False,
    predict_with_kv_cache: bool = False,
    device: Literal["cpu", "gpu", "npu"] = "cpu",
    providers_list: list[str] | None = None,
    memory: int | None = None,
    account_name: str | None = None,
    container_name: str | None = None,
    log_level: LogLevel = 3,
    save_config_file: bool = False,
    cache_dir: str = ".olive-cache",
) -> WorkflowOutput:
    """Tune ONNX Runtime session parameters of a model and keep the fastest as its inference settings.

    A Hugging Face model is exported first (OnnxConversion). OrtSessionParamsTuning then times one
    session per point of the grid: execution provider x intra-op threads x inter-op threads x
    execution mode x graph optimization level (x IOBinding off/on with io_bind), on dummy inputs
    (batch 1, sequence 128; with predict_with_kv_cache one decode step after a 128-token past). The
    candidate's inference_config.json holds the fastest setting; every timing is in its
    attributes ("tuning").

    The target EP is providers_list[0], else the device's (cpu: CPUExecutionProvider, gpu:
    CUDAExecutionProvider, npu: QNNExecutionProvider); the other EPs of providers_list are tuned as
    well unless disable_force_evaluate_other_eps. An EP that this onnxruntime build lacks is refused
    before any work, and so are EP options for EPs that are not tuned (enable_cuda_graph: CUDA or
    TensorRT, with io_bind; trt_fp16_enable: TensorRT).

    Args:
        model_name_or_path: ONNX model (model.onnx or its folder), or a Hugging Face model folder or Hub name (exported first).
        task: Task a Hugging Face model is loaded for (text-generation-with-past, feature-extraction, ...).
        trust_remote_code: Run the model repository's own code when loading it.
        output_path: Output folder of the run.
        cpu_cores: CPU cores the intra-op thread counts are chosen up to (1 and cpu_cores); default: this machine's.
        io_bind: Also time every setting with IOBinding (inputs bound once, outputs on the device).
        enable_cuda_graph: Capture a CUDA graph (CUDA or TensorRT EP; needs io_bind).
        execution_mode_list: Execution modes to try: 0 sequential, 1 parallel (default: 0).
        opt_level_list: Graph optimization levels to try: 0, 1, 2, 99 (default: 99).
        trt_fp16_enable: TensorRT EP: build fp16 engines.
        intra_thread_num_list: Intra-op thread counts to try (default: 1 and the core count).
        inter_thread_num_list: Inter-op thread counts to try (default: 1).
        extra_session_config: Session config entries for every setting, as a JSON object, e.g. '{"session.intra_op.allow_spinning": "0"}'.
        disable_force_evaluate_other_eps: Tune only the target EP; other EPs in providers_list are then refused.
        enable_profiling: Write an ONNX Runtime profile of the fastest setting into the candidate (ort_profile.json).
        predict_with_kv_cache: Decoders: time one decode step with the KV cache (past inputs) instead of a prefill.
        device: Target device; sets the target EP when providers_list is not given.
        providers_list: Execution providers to tune (case sensitive); the first is the target.
        memory: Accelerator memory limit. Not supported: refused.
        account_name: Azure storage account of the shared cache.
        container_name: Azure Blob container of the shared cache.
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).
        save_config_file: Also write the recipe this call runs as <output_path>/tune_session_params_config.yaml.
        cache_dir: Cache folder of the run.

    Returns:
        The run's WorkflowOutput: the tuned candidate, its inference settings the fastest found.
    """
    return run_workflow("tune_session_params", build, dict(locals()))


def build(args: dict) -> dict:
    refuse_unhonoured(args, ("memory",))
    config = tuning_config(args)
    target = (args["providers_list"] or [DEVICE_PROVIDERS[args["device"]]])[0]
    from ..passes.session_tuning import OrtSessionParamsTuning
    from ..passes.session_tuning_options import tuned_providers

    try:  # the pass's own checks (EPs present, EP options for EPs tuned), now rather than after the export
        tuned_providers(OrtSessionParamsTuning.resolve_config(config), target)
    except PassError as error:
        raise RecipeError(error.message.replace("force_evaluate_other_eps", "disable_force_evaluate_other_eps"),
                          error.fix.replace("set force_evaluate_other_eps: true", "drop disable_force_evaluate_other_eps")
                          .replace("intra_op_thread_num_list", "intra_thread_num_list")) from None
    engine = engine_section(args)
    model = input_model(args["model_name_or_path"], args["task"], args["trust_remote_code"])
    if args["predict_with_kv_cache"]:
        check_has_past(model)
    passes = exported_first(model, "session_params_tuning", {"type": "OrtSessionParamsTuning", "config": config})
    device = "gpu" if target in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else args["device"]
    return {
        "description": f"olive-systems tune_session_params ({target}): {args['model_name_or_path']}",
        "input_model": model,
        "systems": {"local_system": {"type": "LocalSystem",
                                     "accelerators": [{"device": device, "execution_providers": [target]}]}},
        "passes": passes,
        "pass_flows": [list(passes)],
        "engine": engine,
    }


def tuning_config(args: dict) -> dict:
    """The OrtSessionParamsTuning config of the arguments (only what was given: the rest are its defaults)."""
    config: dict = {}
    modes = args["execution_mode_list"]
    if modes:
        unknown = [mode for mode in modes if mode not in EXECUTION_MODE_NAMES]
        if unknown:
            refuse("execution_mode_list", modes, f"{unknown[0]} is not an execution mode", "0 sequential, 1 parallel")
        config["execution_mode_list"] = [EXECUTION_MODE_NAMES[mode] for mode in dict.fromkeys(modes)]
    if args["opt_level_list"]:
        unknown = [level for level in args["opt_level_list"] if level not in (0, 1, 2, 99)]
        if unknown:
            refuse("opt_level_list", args["opt_level_list"], f"{unknown[0]} is not a graph optimization level",
                   "0 disable all, 1 basic, 2 extended, 99 all")
        config["opt_level_list"] = list(dict.fromkeys(args["opt_level_list"]))
    for argument, key in (("intra_thread_num_list", "intra_op_thread_num_list"),
                          ("inter_thread_num_list", "inter_op_thread_num_list")):
        values = args[argument]
        if values:
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
                refuse(argument, values, "thread counts are whole numbers, 0 meaning ONNX Runtime's default",
                       "give numbers like 1 2 4")
            config[key] = list(dict.fromkeys(values))
    if args["cpu_cores"] is not None:
        if isinstance(args["cpu_cores"], bool) or not isinstance(args["cpu_cores"], int) or args["cpu_cores"] < 1:
            refuse("cpu_cores", args["cpu_cores"], "is not a core count", "give a whole number of 1 or more")
        config["cpu_cores"] = args["cpu_cores"]
    extra = args["extra_session_config"]
    if extra:
        config["extra_session_config"] = session_config_entries(extra)
    if args["providers_list"]:
        config["providers_list"] = list(args["providers_list"])
        config["force_evaluate_other_eps"] = not args["disable_force_evaluate_other_eps"]
    for flag in ("io_bind", "enable_cuda_graph", "trt_fp16_enable", "enable_profiling", "predict_with_kv_cache"):
        if args[flag]:
            config[flag] = True
    return config


def session_config_entries(extra) -> dict:
    """extra_session_config as a dict of entries: a JSON object string or a dict, values scalars."""
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError as error:
            refuse("extra_session_config", extra, f"is not JSON ({error})",
                   "give a JSON object, e.g. '{\"session.intra_op.allow_spinning\": \"0\"}'")
    if not isinstance(extra, dict) or not all(isinstance(v, (str, int, float, bool)) for v in extra.values()):
        refuse("extra_session_config", extra, "is not an object of config entries (key: scalar value)",
               "give a JSON object, e.g. '{\"session.intra_op.allow_spinning\": \"0\"}'")
    return dict(extra)


def check_has_past(model: dict) -> None:
    """predict_with_kv_cache needs past key/value inputs: an ONNX model's graph is read (not its
    weights), a Hugging Face model must be exported with its KV cache."""
    if model["type"] == "HfModel":
        if not model["task"].endswith("-with-past"):
            refuse("predict_with_kv_cache", True, f"task {model['task']} exports no KV cache",
                   "use task text-generation-with-past, or drop predict_with_kv_cache")
        return
    import onnx

    graph = onnx.load(str(Path(model["model_path"]) / "model.onnx"), load_external_data=False).graph
    names = [arg.name for arg in graph.input]
    if not any(name.startswith("past") for name in names):
        refuse("predict_with_kv_cache", True, f"the model has no past key/value inputs (inputs: {', '.join(names)})",
               "give a decoder exported with its KV cache, or drop predict_with_kv_cache")
