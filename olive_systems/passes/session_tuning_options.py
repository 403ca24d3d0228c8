"""The option surface of OrtSessionParamsTuning beyond threads, modes and levels: which execution
providers are tuned, IOBinding, CUDA graphs, TensorRT fp16, extra session config entries, profiling
and a KV-cache (decode step) feed. What is measured, and how, stays in session_tuning.py.

Every option is checked before any session is made: an EP this onnxruntime build lacks is an error
(never a fallback to another), and an EP option for an EP that is not tuned is refused.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from ..errors import PassError

CUDA, TENSORRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"

OPTIONS_SCHEMA = {
    "providers_list": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1, "default": None,
                       "description": "execution providers to tune (case sensitive); null: the target's"},
    "force_evaluate_other_eps": {"type": "boolean", "default": False,
                                 "description": "also tune the EPs of providers_list that are not the target's"},
    "cpu_cores": {"type": ["integer", "null"], "minimum": 1, "default": None,
                  "description": "cores the intra-op thread counts are chosen up to (when intra_op_thread_num_list is null)"},
    "io_bind": {"type": "boolean", "default": False,
                "description": "also time every setting with IOBinding (inputs bound once, outputs on the device)"},
    "enable_cuda_graph": {"type": "boolean", "default": False,
                          "description": "capture a CUDA graph (CUDA or TensorRT EP; needs io_bind)"},
    "trt_fp16_enable": {"type": "boolean", "default": False, "description": "TensorRT EP: build fp16 engines"},
    "extra_session_config": {"type": ["object", "null"], "additionalProperties": {"type": ["string", "number", "boolean"]},
                             "default": None,
                             "description": "session config entries (SessionOptions.add_session_config_entry) of every setting"},
    "enable_profiling": {"type": "boolean", "default": False,
                         "description": "write an ORT profile of the fastest setting into the candidate (ort_profile.json)"},
    "predict_with_kv_cache": {"type": "boolean", "default": False,
                              "description": "decoders: time a decode step (one new token after a past of dummy_sequence_length)"},
}

PROFILE_FILE = "ort_profile.json"


def tuned_providers(config: dict, target_ep: str, check_available: bool = True) -> list[str]:
    """The EPs to tune, refused (PassError) before any work where one cannot be honoured;
    check_available=False leaves out what depends on the machine (the recipe checks)."""
    providers = list(dict.fromkeys(config.get("providers_list") or [target_ep]))
    others = [ep for ep in providers if ep != target_ep]
    if others and not config.get("force_evaluate_other_eps"):
        raise PassError(f"providers_list names {', '.join(others)} besides the target's {target_ep}",
                        "set force_evaluate_other_eps: true to tune them as well, or drop them")
    if config.get("enable_cuda_graph"):
        if not {CUDA, TENSORRT} & set(providers):
            raise PassError(f"enable_cuda_graph: CUDA graphs are an option of {CUDA} and {TENSORRT}; "
                            f"the EPs tuned are {', '.join(providers)}",
                            "drop enable_cuda_graph, or tune a CUDA or TensorRT EP")
        if not config.get("io_bind"):
            raise PassError("enable_cuda_graph needs io_bind: a captured graph replays on fixed input and output buffers",
                            "set io_bind: true")
    if config.get("trt_fp16_enable") and TENSORRT not in providers:
        raise PassError(f"trt_fp16_enable is an option of {TENSORRT}; the EPs tuned are {', '.join(providers)}",
                        f"drop trt_fp16_enable, or tune {TENSORRT}")
    if config.get("cpu_cores") and config.get("intra_op_thread_num_list"):
        raise PassError("cpu_cores and intra_op_thread_num_list both set the intra-op thread counts",
                        "give one of them")
    if config.get("predict_with_kv_cache") and config.get("data_config"):
        raise PassError("predict_with_kv_cache times a decode step on dummy inputs, and data_config names data",
                        "drop one of them")
    # last: what this machine has (the checks above hold wherever the pass runs)
    if not check_available:
        return providers
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [ep for ep in providers if ep not in available]
    if missing:
        where = "providers_list: " if config.get("providers_list") else "the target execution provider "
        raise PassError(f"{where}{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in this "
                        f"onnxruntime build (it has {', '.join(available)}); EP names are case sensitive",
                        "install the onnxruntime package of that EP (onnxruntime-gpu for CUDA and TensorRT, "
                        "onnxruntime-openvino, ...) or tune on a system that has it")
    return providers


def provider_options(ep: str, config: dict) -> dict:
    options = {}
    if config.get("enable_cuda_graph") and ep == CUDA:
        options["enable_cuda_graph"] = "1"
    if config.get("enable_cuda_graph") and ep == TENSORRT:
        options["trt_cuda_graph_enable"] = "1"
    if config.get("trt_fp16_enable") and ep == TENSORRT:
        options["trt_fp16_enable"] = "1"
    return options


def intra_thread_counts(config: dict) -> list[int]:
    if config.get("intra_op_thread_num_list"):
        return list(config["intra_op_thread_num_list"])
    cores = config.get("cpu_cores") or os.cpu_count() or 1
    return sorted({1, cores})


def extra_entries(config: dict) -> dict:
    """extra_session_config as ONNX Runtime takes it: every value a string (true/false in lower case)."""
    return {key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in (config.get("extra_session_config") or {}).items()}


def candidate_settings(config: dict, providers: list[str]) -> list[dict]:
    """One inference-settings dict per point of the grid (EP x threads x mode x level x io_bind)."""
    from ..ort import EXECUTION_MODES

    extra = extra_entries(config)
    binds = [False, True] if config.get("io_bind") and not config.get("enable_cuda_graph") else [bool(config.get("io_bind"))]
    settings = []
    for ep, intra, inter, mode, level, bind in itertools.product(
        providers, intra_thread_counts(config), config["inter_op_thread_num_list"], config["execution_mode_list"],
        config["opt_level_list"], binds,
    ):
        session_options = {"intra_op_num_threads": intra, "inter_op_num_threads": inter,
                           "execution_mode": EXECUTION_MODES[mode], "graph_optimization_level": level}
        if extra:
            session_options["extra_session_config"] = extra
        settings.append({"execution_provider": [[ep, provider_options(ep, config)]],
                         "session_options": session_options, "io_bind": bind})
    return settings


def describe(settings: dict) -> str:
    options = settings["session_options"]
    mode = "ORT_PARALLEL" if options["execution_mode"] else "ORT_SEQUENTIAL"
    ep = settings["execution_provider"][0][0].replace("ExecutionProvider", "")
    return (f"{ep} intra={options['intra_op_num_threads']} inter={options['inter_op_num_threads']} {mode} "
            f"level={options['graph_optimization_level']}{' io_bind' if settings.get('io_bind') else ''}")


def device_of(ep: str) -> str:
    return "cuda" if ep in (CUDA, TENSORRT) else "cpu"


def make_runner(session, feed: dict, settings: dict, model_path: Path):
    """A no-argument callable that runs the session once as the settings say: session.run, or with
    IOBinding (inputs copied to the device once; with a CUDA graph, outputs in fixed buffers too)."""
    if not settings.get("io_bind"):
        return lambda: session.run(None, feed)
    import onnxruntime as ort

    ep = settings["execution_provider"][0][0]
    device = device_of(ep)
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    graph = any(key in settings["execution_provider"][0][1] for key in ("enable_cuda_graph", "trt_cuda_graph_enable"))
    if graph:  # a replayed graph writes to the addresses it was captured with: preallocate the outputs
        for name, value in zip([o.name for o in session.get_outputs()], _plain_outputs(model_path, feed, ep)):
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    else:
        for output in session.get_outputs():
            binding.bind_output(output.name, device)

    def run_once():
        session.run_with_iobinding(binding)
    run_once.outputs = binding.copy_outputs_to_cpu  # what the bound outputs hold (checked by the tests)
    return run_once


def _plain_outputs(model_path: Path, feed: dict, ep: str) -> list:
    """The outputs (their shapes and types) from a session on the same EP without the graph option."""
    from ..ort import create_session

    plain = create_session(model_path, None, ep)
    return plain.run(None, feed)


def decode_step_feed(session, batch_size: int, past_length: int) -> dict:
    """Inputs of one decode step: one new token per sequence after `past_length` cached ones (the
    past_* inputs), the attention mask over both. Refused for a model without past inputs."""
    import numpy as np

    inputs = session.get_inputs()
    if not any(arg.name.startswith("past") for arg in inputs):
        raise PassError(f"predict_with_kv_cache: the model has no past key/value inputs (inputs: "
                        f"{', '.join(arg.name for arg in inputs)})",
                        "export the decoder with its KV cache (task text-generation-with-past), or drop predict_with_kv_cache")
    from ..ort import input_dtype

    feed = {}
    for arg in inputs:
        shape = []
        for index, dim in enumerate(arg.shape):
            text = str(dim)
            if isinstance(dim, int):
                shape.append(dim)
            elif index == 0:
                shape.append(batch_size)
            elif "past" in text:
                shape.append(past_length)
            elif "total" in text or "mask" in arg.name:
                shape.append(past_length + 1)
            else:
                shape.append(1)
        dtype = input_dtype(arg)
        if "mask" in arg.name:
            feed[arg.name] = np.ones(shape, dtype=dtype)
        elif arg.name.startswith("position"):
            feed[arg.name] = np.full(shape, past_length, dtype=dtype)
        else:
            feed[arg.name] = np.zeros(shape, dtype=dtype)
    return feed


def write_profile(model_path: Path, settings: dict, feed: dict, out_dir: Path, runs: int = 5) -> Path:
    """Profile `runs` calls of the fastest setting (a session of its own: profiling is kept out of the
    timed runs) and keep the profile in the candidate's folder as ort_profile.json."""
    from ..ort import create_session

    ep = settings["execution_provider"][0][0]
    profiled = {**settings, "session_options": {**settings["session_options"], "enable_profiling": True,
                                                "profile_file_prefix": str(out_dir / "ort_profile")}}
    session = create_session(model_path, profiled, ep)
    run_once = make_runner(session, feed, settings, model_path)
    for _ in range(runs):
        run_once()
    written = Path(session.end_profiling())
    target = out_dir / PROFILE_FILE
    written.replace(target)
    return target



def with_required_options(settings: dict, config: dict) -> dict:
    """A setting (ONNX Runtime's default, the baseline every setting is timed against) with what the
    user asked of every session: the extra session config entries and the EP's options (CUDA graph,
    TensorRT fp16; a CUDA graph replays only with IOBinding). These are not searched, so whichever
    setting wins keeps them."""
    ep = settings["execution_provider"][0][0]
    extra = extra_entries(config)
    session_options = {**settings["session_options"], **({"extra_session_config": extra} if extra else {})}
    return {**settings, "execution_provider": [[ep, {**settings["execution_provider"][0][1], **provider_options(ep, config)}]],
            "session_options": session_options,
            "io_bind": settings.get("io_bind", False) or bool(config.get("enable_cuda_graph"))}


def recipe_problems(recipe: dict, name: str) -> list:
    """The option refusals of every OrtSessionParamsTuning pass of a normalized recipe, for each EP its
    targets name, as RecipeErrors: found when the recipe loads, not when the pass runs."""
    from ..errors import RecipeError
    from .session_tuning import OrtSessionParamsTuning

    engine, systems = recipe.get("engine", {}), recipe.get("systems", {})
    targets = engine.get("target") if isinstance(engine.get("target"), list) else [engine.get("target")]
    eps = [ep for target in targets for accelerator in (systems.get(target) or {}).get("accelerators") or []
           for ep in accelerator.get("execution_providers") or []]
    problems = []
    for pass_name, entry in recipe.get("passes", {}).items():
        if entry.get("type") != "OrtSessionParamsTuning":
            continue
        config = entry.get("config") or {}
        if any(isinstance(value, dict) for value in config.values()):
            continue  # a searched value: each point is checked when it runs
        for ep in dict.fromkeys(eps):
            try:
                tuned_providers(OrtSessionParamsTuning.resolve_config(config), ep, check_available=False)
            except PassError as error:
                problems.append(RecipeError(f"{name}: passes.{pass_name}.config (target {ep}): {error.message}", error.fix))
                break
    return problems
