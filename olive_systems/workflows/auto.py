"""auto_opt: export, optimize and quantize a model for one device and execution provider, with the
passes chosen from task, device, provider and precision; evaluated and ranked."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import PassError, RecipeError
from .common import (LogLevel, Precision, WorkflowOutput, data_config, engine_section, hf_model_type, input_model,
                     is_generative, refuse, refuse_unhonoured, run_workflow)
from .capture import check_genai
from .quantization import QUANT_TYPES, WEIGHT_ONLY_PRECISIONS

AUTO_PRECISIONS = ("fp32", "fp16", "int8", "uint8", "int4", "uint4")
# What enable_search explores, by pass type: the last pass of the flow that has a space is searched.
SEARCH_SPACES = {
    "OnnxDynamicQuantization": {"per_channel": [False, True], "reduce_range": [False, True]},
    "OnnxStaticQuantization": {"per_channel": [False, True], "calibrate_method": ["MinMax", "Percentile"]},
    "OnnxWeightOnlyQuantization": {"block_size": [32, 64, 128]},
    "ModelBuilder": {"int4_block_size": [32, 64, 128]},  # int4 only (see _search_spaces)
    "OnnxFloatToFloat16": {"keep_io_types": [True, False]},
    "OrtTransformersOptimization": {"opt_level": [0, 1]},
}
LATENCY_CONFIG = {"warmup_num": 5, "repeat_test_num": 20}


def auto_opt(
    model_name_or_path: str,
    *,
    task: str = "text-generation-with-past",
    trust_remote_code: bool = False,
    adapter_path: str | None = None,
    model_script: str | None = None,
    script_dir: str | None = None,
    output_path: str = "auto-opt-output",
    device: Literal["cpu", "gpu", "npu"] = "cpu",
    provider: str = "CPUExecutionProvider",
    memory: int | None = None,
    data_name: str | None = None,
    split: str | None = None,
    subset: str | None = None,
    input_cols: list[str] | None = None,
    batch_size: int = 1,
    precision: Precision | None = None,
    use_dynamo_exporter: bool = False,
    use_model_builder: bool = False,
    use_qdq_encoding: bool = False,
    dynamic_to_fixed_shape_dim_param: list[str] | None = None,
    dynamic_to_fixed_shape_dim_value: list[int] | None = None,
    num_splits: int | None = None,
    cost_model: str | None = None,
    mixed_precision_overrides_config: list[str] | None = None,
    use_ort_genai: bool = False,
    enable_search: Literal["random", "sequential", "tpe"] | None = None,
    seed: int | None = None,
    account_name: str | None = None,
    container_name: str | None = None,
    log_level: LogLevel = 3,
    save_config_file: bool = False,
    data_files: str | list[str] | None = None,
    text_field: str | None = None,
    text_template: str | None = None,
    use_chat_template: bool = False,
    max_seq_len: int | None = None,
    add_special_tokens: bool | None = None,
    max_samples: int | None = None,
    cache_dir: str = ".olive-cache",
) -> WorkflowOutput:
    """Optimize a model for one device and execution provider, evaluate and rank the candidates.

    The passes follow from task, device, provider and precision (default fp32 on cpu and npu, fp16
    on gpu):

    - decoder tasks (text-generation, text-generation-with-past): ModelBuilder at that precision
      with use_model_builder (uint4: int4 with zero points); otherwise OnnxConversion, then
      OnnxWeightOnlyQuantization (rtn; 4 bits for int4/uint4, 8 bits for int8/uint8) or
      OnnxFloatToFloat16 (fp16). Both exporters write genai_config.json beside a decoder.
    - other tasks: OnnxConversion, OrtTransformersOptimization (when onnxruntime knows the model
      type), then OnnxDynamicQuantization for int8/uint8 (OnnxStaticQuantization with QDQ nodes when
      use_qdq_encoding, calibrated on the dataset), OnnxWeightOnlyQuantization for int4/uint4, or
      OnnxFloatToFloat16 for fp16.
    - DynamicToFixedShape right after the export when dynamic_to_fixed_shape_dim_param is given.

    Every candidate and the input model are timed: decoders by greedy generation (tokens per
    second, time to first token) where this install has the generation metric, other models by the
    latency of one forward pass on dummy inputs (batch 1, sequence 128). With a dataset, non-decoder
    candidates are also scored for fidelity to the input model (cosine of mean-pooled outputs,
    ranked first); decoder candidates for perplexity where this install has that metric (a dataset
    is refused where it has not). enable_search searches the settings of the flow's last
    searchable pass (quantization: per-channel, reduce range, calibration method or block size;
    float16: keep_io_types; fusion: opt_level), one candidate per point.

    Args:
        model_name_or_path: Hugging Face model folder or Hub name, a .gguf file, or an ONNX model (model.onnx or its folder).
        task: Task the model is loaded for (text-generation-with-past, text-generation, feature-extraction, ...).
        trust_remote_code: Run the model repository's own code when loading it.
        adapter_path: PEFT adapter to apply first. Not supported: refused.
        model_script: Script defining a PyTorch model. Not supported: refused.
        script_dir: Folder of model_script. Not supported: refused.
        output_path: Output folder of the run.
        device: Target device.
        provider: Target execution provider, e.g. CPUExecutionProvider, CUDAExecutionProvider, OpenVINOExecutionProvider.
        memory: Accelerator memory in bytes: with cost_model, the most weight bytes of one split part.
        data_name: Evaluation dataset (a dataset name or folder, or csv/json/parquet/text with data_files).
        split: Split of the dataset.
        subset: Subset (configuration) of the dataset.
        input_cols: Encoder tasks: the text columns to tokenize.
        batch_size: Samples per evaluation batch.
        precision: Output precision: fp32, fp16, int8, uint8, int4 or uint4 (default: fp32, fp16 on gpu).
        use_dynamo_exporter: Export with torch.onnx.export(dynamo=True).
        use_model_builder: Build decoder models with onnxruntime-genai's Model Builder.
        use_qdq_encoding: int8/uint8 of non-decoder tasks: static quantization with QDQ nodes, calibrated on the dataset.
        dynamic_to_fixed_shape_dim_param: Symbolic dimensions to fix after the export, e.g. batch_size sequence_length.
        dynamic_to_fixed_shape_dim_value: Their sizes, in the same order.
        num_splits: Split the ONNX model into this many parts that run in a chain (SplitModel, the last pass).
        cost_model: Cost model CSV (generate_cost_model) to split by, into parts of at most memory bytes.
        mixed_precision_overrides_config: Per-node precisions. Not supported: refused.
        use_ort_genai: Make a folder onnxruntime-genai runs (decoder tasks; both exporters write one).
        enable_search: Search the settings of the last searchable pass: random, sequential (every point) or tpe.
        seed: Seed of the search's sampler.
        account_name: Azure storage account of the shared cache.
        container_name: Azure Blob container of the shared cache.
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).
        save_config_file: Also write the recipe this call runs as <output_path>/auto_opt_config.yaml.
        data_files: Data files, comma-separated.
        text_field: Column holding the text.
        text_template: Decoder tasks: template building the text from columns, e.g. '### Q: {prompt} ### A: {response}'.
        use_chat_template: Decoder tasks: format the text with the tokenizer's chat template.
        max_seq_len: Longest tokenized sequence.
        add_special_tokens: Decoder tasks: add the tokenizer's special tokens.
        max_samples: Use at most this many samples of the dataset.
        cache_dir: Cache folder of the run.

    Returns:
        The run's WorkflowOutput: the candidates ranked.
    """
    return run_workflow("auto_opt", build, dict(locals()))


def build(args: dict) -> dict:
    refuse_unhonoured(args, ("adapter_path", "model_script", "script_dir", "mixed_precision_overrides_config"))
    split = _split_config(args)
    device, provider, task = args["device"], args["provider"], args["task"]
    if not str(provider).endswith("ExecutionProvider"):
        refuse("provider", provider, "is not the name of an execution provider",
               "e.g. CPUExecutionProvider, CUDAExecutionProvider, OpenVINOExecutionProvider, QNNExecutionProvider")
    precision = args["precision"] or ("fp16" if device == "gpu" else "fp32")
    if precision not in AUTO_PRECISIONS:
        refuse("precision", precision, f"auto_opt makes {', '.join(AUTO_PRECISIONS)} models", "use one of those")
    dims = _fixed_dims(args)
    if args["seed"] is not None and not args["enable_search"]:
        refuse("seed", args["seed"], "seeds the search, and enable_search is not set", "add enable_search, or drop seed")
    generative = is_generative(task)
    use_builder = bool(args["use_model_builder"])
    if use_builder and not generative:
        refuse("use_model_builder", True, f"Model Builder builds decoder language models; task {task} is not one",
               "drop it: OnnxConversion exports this task")
    check_genai(args)
    if use_builder and args["use_dynamo_exporter"]:
        refuse("use_dynamo_exporter", True, "is an option of the torch exporter, and Model Builder builds the model",
               "drop use_dynamo_exporter or use_model_builder")
    data = data_config("evaluation", args, task)
    metrics = evaluation_metrics(task, data)
    if use_builder:
        builder = _builder_config(precision)
        if args["use_qdq_encoding"]:
            refuse("use_qdq_encoding", True, "Model Builder writes MatMulNBits, not QDQ nodes", "drop use_qdq_encoding")
    else:
        precision_pass = _precision_pass(precision, generative, args["use_qdq_encoding"], data)
    engine = engine_section(args)
    model = input_model(args["model_name_or_path"], task, args["trust_remote_code"])  # may download: refusals first
    passes = {}
    if model["type"] == "OnnxModel":
        for flag in ("use_model_builder", "use_dynamo_exporter"):
            if args[flag]:
                refuse(flag, True, "chooses how to export, and the input is already an ONNX model", f"drop {flag}")
        if args["use_ort_genai"] and not (Path(model["model_path"]) / "genai_config.json").is_file():
            refuse("use_ort_genai", True, "the input ONNX model is not an onnxruntime-genai folder (no genai_config.json)",
                   "start from the Hugging Face model, or drop use_ort_genai")
    elif use_builder:
        passes["model_builder"] = {"type": "ModelBuilder", "config": builder}
    else:
        passes["conversion"] = {"type": "OnnxConversion", "config": {"use_dynamo_exporter": True} if args["use_dynamo_exporter"] else {}}
    if dims:
        passes["fixed_shape"] = {"type": "DynamicToFixedShape", "config": {"dim_param": dims[0], "dim_value": dims[1]}}
    if not generative and _fusable(model):
        passes["fusion"] = {"type": "OrtTransformersOptimization", "config": {"use_gpu": True} if device == "gpu" else {}}
    if not use_builder:
        passes.update(precision_pass)
    if split:  # the parts run in a chain; no pass takes them, so it goes last
        passes["split"] = {"type": "SplitModel", "config": split}
    engine["evaluator"] = "auto"
    if args["enable_search"]:
        _search_spaces(passes, args["enable_search"])
        engine["search_strategy"] = {"execution_order": "joint", "search_algorithm": args["enable_search"],
                                     "search_algorithm_config": {"seed": args["seed"] or 0}}
    if not passes:
        refuse("precision", precision, "leaves nothing to do to this ONNX model", "choose another precision")
    return {
        "description": f"olive-systems auto_opt ({device}, {provider}, {precision}): {args['model_name_or_path']}",
        "input_model": model,
        "data_configs": [data] if data else [],
        "systems": {"local_system": {"type": "LocalSystem",
                                     "accelerators": [{"device": device, "execution_providers": [provider]}]}},
        "evaluators": {"auto": {"metrics": metrics}},
        "passes": passes,
        "pass_flows": [list(passes)],
        "engine": engine,
    }


def _fixed_dims(args: dict) -> tuple[list[str], list[int]] | None:
    from ..passes.dynamic_shape import check_dim_config

    try:
        params, values = check_dim_config(args["dynamic_to_fixed_shape_dim_param"], args["dynamic_to_fixed_shape_dim_value"])
    except PassError as exc:
        raise RecipeError(f"dynamic_to_fixed_shape_dim_param/value: {exc.message}", exc.fix) from None
    return (params, values) if params else None


def _builder_config(precision: str) -> dict:
    if precision == "uint8":
        refuse("precision", precision, "Model Builder quantizes 8-bit weights symmetrically", "use precision int8")
    if precision == "uint4":
        return {"precision": "int4", "int4_is_symmetric": False}
    return {"precision": precision}


def _precision_pass(precision: str, generative: bool, use_qdq_encoding: bool, data: dict | None) -> dict:
    """The pass that brings an fp32 ONNX model to the precision asked for ({} for fp32)."""
    if use_qdq_encoding and (generative or precision not in QUANT_TYPES):
        refuse("use_qdq_encoding", True, "QDQ nodes are written by static int8/uint8 quantization of non-decoder models",
               "drop use_qdq_encoding")
    if precision == "fp32":
        return {}
    if precision == "fp16":
        return {"fp16": {"type": "OnnxFloatToFloat16", "config": {}}}
    bits, symmetric = WEIGHT_ONLY_PRECISIONS[precision]
    if generative or bits == 4:
        return {f"rtn_{precision}": {"type": "OnnxWeightOnlyQuantization",
                                     "config": {"algorithm": "rtn", "bits": bits, "is_symmetric": symmetric}}}
    if use_qdq_encoding:
        if data is None:
            refuse("use_qdq_encoding", True, "static quantization calibrates on data, and no dataset is given",
                   "give data_name (and input_cols), or drop use_qdq_encoding")
        return {f"static_{precision}": {"type": "OnnxStaticQuantization", "config": {
            "data_config": data["name"], "quant_format": "QDQ",
            "weight_type": QUANT_TYPES[precision], "activation_type": QUANT_TYPES[precision]}}}
    return {f"dynamic_{precision}": {"type": "OnnxDynamicQuantization", "config": {"weight_type": QUANT_TYPES[precision]}}}


def _fusable(model: dict) -> bool:
    """Whether onnxruntime.transformers has fusions for the model's architecture (config.json model_type)."""
    model_type = hf_model_type(model)
    if not model_type:
        return False
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    return model_type in MODEL_TYPES


def _split_config(args: dict) -> dict | None:
    """SplitModel's settings: num_splits, or cost_model with memory (the seed's two exclusive ways)."""
    if args["num_splits"] and args["cost_model"]:
        refuse("cost_model", args["cost_model"], "and num_splits are two ways to split", "give one of them")
    if args["cost_model"] and not args["memory"]:
        refuse("cost_model", args["cost_model"], "packs modules into parts of at most memory bytes, and memory is not set",
               "add memory (the accelerator's memory in bytes)")
    if args["memory"] and not args["cost_model"]:
        refuse("memory", args["memory"], "is the budget of a split by cost_model, and cost_model is not set",
               "add cost_model (olive-systems generate-cost-model writes one), or drop memory")
    if (args["num_splits"] or args["cost_model"]) and args["use_ort_genai"]:
        refuse("use_ort_genai", True, "onnxruntime-genai runs one model, not split parts", "drop use_ort_genai or the split")
    if args["cost_model"]:
        return {"cost_model": str(Path(args["cost_model"]).expanduser().resolve()), "memory": args["memory"]}
    return {"num_splits": args["num_splits"]} if args["num_splits"] else None


def _search_spaces(passes: dict, algorithm: str) -> None:
    for entry in reversed(passes.values()):
        space = SEARCH_SPACES.get(entry["type"])
        if entry["type"] == "ModelBuilder" and entry["config"]["precision"] != "int4":
            space = None
        if space:
            entry["config"].update({key: {"choices": list(values)} for key, values in space.items()})
            return
    refuse("enable_search", algorithm, f"the flow ({', '.join(passes) or 'no passes'}) has no setting to search",
           "choose a quantized precision, or drop enable_search")


def evaluation_metrics(task: str, data: dict | None) -> list[dict]:
    """Speed always (decoders: greedy generation where this install has that metric, latency of one
    forward pass otherwise); with a dataset, a quality metric ranked first."""
    from ..evaluation.metrics import METRIC_TYPES

    metrics = []
    if data is not None and is_generative(task):
        if "perplexity" not in METRIC_TYPES:
            refuse("data_name", data["load_dataset_config"]["data_name"],
                   f"scoring a {task} model on a dataset needs the perplexity metric, which this olive-systems lacks",
                   "drop the data arguments: the candidates are ranked by latency")
        sub_types = METRIC_TYPES["perplexity"]
        sub = "perplexity" if "perplexity" in sub_types or not sub_types else next(iter(sub_types))
        metrics.append({"name": "perplexity", "type": "perplexity", "data_config": data["name"],
                        "sub_types": [{"name": sub, "priority": 1}]})
    elif data is not None:
        metrics.append({"name": "fidelity", "type": "fidelity", "data_config": data["name"],
                        "sub_types": [{"name": "cosine_mean", "priority": 1}]})
    if is_generative(task) and "generation" in METRIC_TYPES:
        metrics.append({"name": "generation", "type": "generation",
                        "sub_types": [{"name": "tokens_per_second", "priority": len(metrics) + 1}, {"name": "ttft_ms"}]})
    else:
        metrics.append({"name": "latency", "type": "latency",
                        "sub_types": [{"name": "avg", "priority": len(metrics) + 1}, {"name": "p90"}],
                        "metric_config": dict(LATENCY_CONFIG)})
    return metrics
