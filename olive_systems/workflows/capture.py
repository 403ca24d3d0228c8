"""capture_onnx_graph: a Hugging Face model -> one ONNX model, by the torch exporter or Model Builder."""

from __future__ import annotations

from typing import Literal

from ..errors import RecipeError
from .common import LogLevel, WorkflowOutput, input_model, engine_section, is_generative, refuse, refuse_unhonoured, run_workflow

# Arguments that belong to one of the two exporters, with their defaults: setting one for the other is refused.
EXPORTER_ONLY = {"use_dynamo_exporter": False, "fixed_param_dict": None, "past_key_value_name": None,
                 "torch_dtype": None, "target_opset": 17}
MODEL_BUILDER_ONLY = {"precision": "fp32", "int4_block_size": 32, "int4_accuracy_level": None,
                      "exclude_embeds": False, "exclude_lm_head": False, "enable_cuda_graph": False}


def capture_onnx_graph(
    model_name_or_path: str,
    *,
    task: str = "text-generation-with-past",
    trust_remote_code: bool = False,
    adapter_path: str | None = None,
    model_script: str | None = None,
    script_dir: str | None = None,
    output_path: str = "captured-model",
    conversion_device: Literal["cpu", "gpu"] = "cpu",
    use_ort_genai: bool = False,
    account_name: str | None = None,
    container_name: str | None = None,
    log_level: LogLevel = 3,
    save_config_file: bool = False,
    use_dynamo_exporter: bool = False,
    fixed_param_dict: str | dict[str, int] | None = None,
    past_key_value_name: str | None = None,
    torch_dtype: Literal["float32", "float16", "bfloat16"] | None = None,
    target_opset: int = 17,
    use_model_builder: bool = False,
    precision: Literal["fp16", "fp32", "int4"] = "fp32",
    int4_block_size: Literal[16, 32, 64, 128, 256] = 32,
    int4_accuracy_level: Literal[0, 1, 2, 3, 4] | None = None,
    exclude_embeds: bool = False,
    exclude_lm_head: bool = False,
    enable_cuda_graph: bool = False,
    cache_dir: str = ".olive-cache",
) -> WorkflowOutput:
    """Capture the ONNX graph of a Hugging Face model, or of the PyTorch module a model_script builds.

    One pass: OnnxConversion (torch.onnx.export; decoder tasks get their KV-cache inputs and
    outputs), or ModelBuilder (onnxruntime-genai's builder, decoder tasks) when use_model_builder is
    set. Either writes a decoder as an onnxruntime-genai folder (genai_config.json beside the model).
    The run gives one candidate, not evaluated.

    Args:
        model_name_or_path: Hugging Face model folder or Hub name, or a .gguf file; with model_script, the weights
            file or folder its _model_loader reads.
        task: Task the model is loaded for (text-generation-with-past, text-generation, feature-extraction, ...).
        trust_remote_code: Run the model repository's own code when loading it.
        adapter_path: PEFT adapter to apply first. Not supported: refused.
        model_script: Script building a PyTorch model: it defines _model_loader(model_name_or_path) -> torch.nn.Module,
            _io_config(model) -> {input_names, output_names, dynamic_axes, input_shapes} and optionally _dummy_inputs(model).
        script_dir: Folder put on sys.path for model_script's own imports.
        output_path: Output folder of the run.
        conversion_device: Device the export runs on; only cpu.
        use_ort_genai: Make a folder onnxruntime-genai runs (decoder tasks; both exporters write one).
        account_name: Azure storage account of the shared cache.
        container_name: Azure Blob container of the shared cache.
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).
        save_config_file: Also write the recipe this call runs as <output_path>/capture_onnx_graph_config.yaml.
        use_dynamo_exporter: Export with torch.onnx.export(dynamo=True).
        fixed_param_dict: Fix dynamic dimensions in the export, e.g. 'batch_size=1,sequence_length=128'.
        past_key_value_name: Name of the forward() argument taking the past key values (dynamo export).
        torch_dtype: Cast the model to this dtype before the export.
        target_opset: ONNX opset of the exported model.
        use_model_builder: Build the model with onnxruntime-genai's Model Builder (decoder tasks).
        precision: Model Builder precision.
        int4_block_size: Model Builder int4 block size.
        int4_accuracy_level: Model Builder int4 MatMul accuracy level (0-4; 4 computes in int8).
        exclude_embeds: Model Builder: leave the embedding layer out of the model.
        exclude_lm_head: Model Builder: leave the language-model head out of the model.
        enable_cuda_graph: Model Builder: allow CUDA graph capture with the CUDA execution provider.
        cache_dir: Cache folder of the run.

    Returns:
        The run's WorkflowOutput.
    """
    return run_workflow("capture_onnx_graph", build, dict(locals()))


def build(args: dict) -> dict:
    refuse_unhonoured(args, ("adapter_path",))
    if args["script_dir"] and not args["model_script"]:
        refuse("script_dir", args["script_dir"], "is the folder of a model_script, and model_script is not set",
               "add model_script, or drop script_dir")
    if args["conversion_device"] != "cpu":
        refuse("conversion_device", args["conversion_device"], "the export runs on the host's CPU",
               "drop conversion_device (the exported model runs on any device)")
    use_builder = bool(args["use_model_builder"])
    check_exporter_options(args, use_builder)
    check_genai(args)
    name, entry = export_pass(args, use_builder)
    engine = engine_section(args)
    if args["model_script"]:  # a PyTorch model its script builds (pytorch_model.py)
        from ..pytorch_model import script_input_model

        if use_builder:
            refuse("use_model_builder", True, "Model Builder builds Hugging Face decoders, not a script's module",
                   "drop use_model_builder")
        return {"description": f"olive-systems capture_onnx_graph: {args['model_script']}",
                "input_model": script_input_model(args["model_script"], args["script_dir"], args["model_name_or_path"]),
                "passes": {name: entry}, "pass_flows": [[name]], "engine": engine}
    model = input_model(args["model_name_or_path"], args["task"], args["trust_remote_code"])  # may download: refusals first
    if model["type"] != "HfModel":
        refuse("model_name_or_path", args["model_name_or_path"], "is already an ONNX model",
               "optimize it with quantize or auto_opt")
    return {
        "description": f"olive-systems capture_onnx_graph: {args['model_name_or_path']}",
        "input_model": model,
        "passes": {name: entry},
        "pass_flows": [[name]],
        "engine": engine,
    }


def check_exporter_options(args: dict, use_builder: bool) -> None:
    """An option of the exporter not used is refused, never dropped."""
    foreign = MODEL_BUILDER_ONLY if not use_builder else EXPORTER_ONLY
    given = [key for key, default in foreign.items() if key in args and args[key] != default]
    if given:
        what = "Model Builder" if not use_builder else "the torch exporter (OnnxConversion)"
        them = "it" if len(given) == 1 else "them"
        fix = f"add use_model_builder (decoder tasks), or drop {them}" if not use_builder else f"drop {them}, or drop use_model_builder"
        raise RecipeError(f"{', '.join(f'{key}={args[key]!r}' for key in given)}: "
                          f"{'an option' if len(given) == 1 else 'options'} of {what}, which this call does not use", fix)
    if use_builder and not is_generative(args["task"]):
        refuse("use_model_builder", True, f"Model Builder builds decoder language models; task {args['task']} is not one",
               "drop it: OnnxConversion exports this task")


def check_genai(args: dict) -> None:
    """use_ort_genai: both exporters write a decoder as an onnxruntime-genai folder; genai runs nothing else."""
    if args.get("use_ort_genai") and not is_generative(args["task"]):
        refuse("use_ort_genai", True, f"onnxruntime-genai runs decoder language models; task {args['task']} is not one",
               "drop use_ort_genai, or use task text-generation-with-past")


def export_pass(args: dict, use_builder: bool) -> tuple[str, dict]:
    """(pass name, pass entry) of the export the arguments ask for."""
    if use_builder:
        precision = args.get("precision", "fp32")
        config = {"precision": precision}
        if precision == "int4":
            config["int4_block_size"] = args.get("int4_block_size", 32)
            if args.get("int4_accuracy_level") is not None:
                config["int4_accuracy_level"] = args["int4_accuracy_level"]
        elif args.get("int4_block_size", 32) != 32 or args.get("int4_accuracy_level") is not None:
            refuse("int4_block_size/int4_accuracy_level", [args.get("int4_block_size"), args.get("int4_accuracy_level")],
                   f"apply to precision int4, not {precision}", "drop them, or use precision int4")
        for key in ("exclude_embeds", "exclude_lm_head", "enable_cuda_graph"):
            if args.get(key):
                config[key] = True
        return "model_builder", {"type": "ModelBuilder", "config": config}
    config = {"target_opset": args.get("target_opset", 17)}
    if args.get("use_dynamo_exporter"):
        config["use_dynamo_exporter"] = True
    for key in ("torch_dtype", "past_key_value_name"):
        if args.get(key) is not None:
            config[key] = args[key]
    if args.get("fixed_param_dict") is not None:
        config["fixed_param_dict"] = parse_fixed_params(args["fixed_param_dict"])
    return "conversion", {"type": "OnnxConversion", "config": config}


def parse_fixed_params(value) -> dict[str, int]:
    """'batch_size=1,sequence_length=128' (or a dict) -> {name: size}."""
    pairs = value.items() if isinstance(value, dict) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(value).split(",") if part.strip())
    fixed = {}
    for name, size in pairs:
        try:
            number = int(size)
        except (TypeError, ValueError):
            number = 0
        if not str(name).strip() or number < 1:
            refuse("fixed_param_dict", value, f"'{name}={size}' is not NAME=SIZE with a positive size",
                   "give e.g. batch_size=1,sequence_length=128")
        fixed[str(name).strip()] = number
    return fixed
