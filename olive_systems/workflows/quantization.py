"""quantize: one quantization pass (after the export, for a Hugging Face model), chosen from
algorithm, precision and whether calibration data is given."""

from __future__ import annotations

from typing import Literal

from .common import (LogLevel, Precision, WorkflowOutput, data_config, engine_section, exported_first, input_model,
                     refuse, refuse_unhonoured, run_workflow)

WEIGHT_ONLY_PRECISIONS = {"int4": (4, True), "uint4": (4, False), "int8": (8, True), "uint8": (8, False)}
QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
ROTATIONS = ("spinquant", "quarot")


def quantize(
    model_name_or_path: str,
    *,
    task: str = "text-generation-with-past",
    trust_remote_code: bool = False,
    adapter_path: str | None = None,
    model_script: str | None = None,
    script_dir: str | None = None,
    output_path: str = "quantized-model",
    algorithm: Literal["awq", "gptq", "hqq", "rtn", "spinquant", "quarot"] = "rtn",
    precision: Precision = "int8",
    act_precision: Precision = "int8",
    implementation: str | None = None,
    use_qdq_encoding: bool = False,
    data_name: str | None = None,
    subset: str | None = None,
    split: str | None = None,
    data_files: str | list[str] | None = None,
    text_field: str | None = None,
    text_template: str | None = None,
    use_chat_template: bool = False,
    max_seq_len: int | None = None,
    add_special_tokens: bool | None = None,
    max_samples: int | None = None,
    batch_size: int | None = None,
    input_cols: list[str] | None = None,
    account_name: str | None = None,
    container_name: str | None = None,
    log_level: LogLevel = 3,
    save_config_file: bool = False,
    cache_dir: str = ".olive-cache",
) -> WorkflowOutput:
    """Quantize a Hugging Face or ONNX model.

    A Hugging Face model is exported first (OnnxConversion), then quantized by one pass, chosen by
    algorithm and precision:

    - rtn, int8/uint8: OnnxStaticQuantization when calibration data is given (activations in
      act_precision; QDQ nodes with use_qdq_encoding, QOperator nodes otherwise), else
      OnnxDynamicQuantization (activations quantized at run time).
    - rtn, gptq or hqq, int4/uint4: OnnxWeightOnlyQuantization to MatMulNBits blocks (int4
      symmetric, uint4 with zero points; gptq calibrates on the data; hqq always fits zero points).

    Refused before any work, each with what to use instead: awq, spinquant, quarot, gptq and hqq
    at 8 bits, the other precisions, and arguments the chosen pass would not use (data for rtn or
    hqq at 4 bits, act_precision or use_qdq_encoding without static quantization).

    Args:
        model_name_or_path: Hugging Face model folder or Hub name, a .gguf file, or an ONNX model (model.onnx or its folder).
        task: Task the model is loaded for (text-generation-with-past, text-generation, feature-extraction, ...).
        trust_remote_code: Run the model repository's own code when loading it.
        adapter_path: PEFT adapter to apply first. Not supported: refused.
        model_script: Script defining a PyTorch model. Not supported: refused.
        script_dir: Folder of model_script. Not supported: refused.
        output_path: Output folder of the run.
        algorithm: rtn, gptq or hqq (awq, spinquant and quarot are refused).
        precision: Weight precision: int8/uint8 (rtn) or int4/uint4 (rtn, gptq, hqq).
        act_precision: Activation precision of static quantization (int8 or uint8).
        implementation: Implementation of the algorithm. Not supported (there is one): refused.
        use_qdq_encoding: Static quantization: write QuantizeLinear/DequantizeLinear pairs instead of QOperator nodes.
        data_name: Calibration dataset: a dataset name or folder, or csv/json/parquet/text with data_files.
        subset: Subset (configuration) of the dataset.
        split: Split of the dataset.
        data_files: Data files, comma-separated.
        text_field: Column holding the text.
        text_template: Text-generation tasks: template building the text from columns, e.g. '### Q: {prompt} ### A: {response}'.
        use_chat_template: Text-generation tasks: format the text with the tokenizer's chat template.
        max_seq_len: Longest tokenized sequence.
        add_special_tokens: Text-generation tasks: add the tokenizer's special tokens.
        max_samples: Use at most this many samples of the dataset.
        batch_size: Samples per calibration batch.
        input_cols: Encoder tasks: the text columns to tokenize.
        account_name: Azure storage account of the shared cache.
        container_name: Azure Blob container of the shared cache.
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).
        save_config_file: Also write the recipe this call runs as <output_path>/quantize_config.yaml.
        cache_dir: Cache folder of the run.

    Returns:
        The run's WorkflowOutput.
    """
    return run_workflow("quantize", build, dict(locals()))


def build(args: dict) -> dict:
    refuse_unhonoured(args, ("adapter_path", "model_script", "script_dir", "implementation"))
    data = data_config("calibration", args, args["task"])
    name, entry = quantization_pass(args["algorithm"], args["precision"], args["act_precision"],
                                    args["use_qdq_encoding"], data)
    engine = engine_section(args)
    model = input_model(args["model_name_or_path"], args["task"], args["trust_remote_code"])  # may download: refusals first
    passes = exported_first(model, name, entry)
    return {
        "description": f"olive-systems quantize ({args['algorithm']}, {args['precision']}): {args['model_name_or_path']}",
        "input_model": model,
        "data_configs": [data] if data else [],
        "passes": passes,
        "pass_flows": [list(passes)],
        "engine": engine,
    }


def quantization_pass(algorithm: str, precision: str, act_precision: str, use_qdq_encoding: bool,
                      data: dict | None) -> tuple[str, dict]:
    """(pass name, pass entry) for the arguments (data: the calibration data config, if any), or a
    RecipeError saying what to use instead."""
    from ..passes.weight_only import AWQ_REFUSAL, EIGHT_BIT_REFUSALS

    if algorithm in ROTATIONS:
        refuse("algorithm", algorithm, f"{algorithm} rotates the weights in PyTorch before quantizing them; "
               "olive-systems quantizes ONNX graphs and has no rotation pass", "use algorithm rtn, gptq or hqq")
    if algorithm == "awq":
        refuse("algorithm", algorithm, AWQ_REFUSAL, "use algorithm gptq (calibrated) or rtn")
    if precision not in WEIGHT_ONLY_PRECISIONS:
        refuse("precision", precision, "olive-systems quantizes weights to int8/uint8 or int4/uint4",
               "use precision int8 or int4 (for float16 use auto_opt with precision fp16)")
    bits, symmetric = WEIGHT_ONLY_PRECISIONS[precision]
    static = bits == 8 and algorithm == "rtn" and data is not None
    if act_precision != "int8" and not static:
        refuse("act_precision", act_precision, "sets the activations of static quantization, which needs algorithm rtn, "
               "precision int8/uint8 and calibration data", "drop act_precision, or give data_name")
    if use_qdq_encoding and not static:
        refuse("use_qdq_encoding", True, "QDQ nodes are written by static quantization, which needs algorithm rtn, "
               "precision int8/uint8 and calibration data", "give data_name, or drop use_qdq_encoding")
    if bits == 8 and algorithm == "rtn":
        if not static:
            return f"dynamic_{precision}", {"type": "OnnxDynamicQuantization", "config": {"weight_type": QUANT_TYPES[precision]}}
        if act_precision not in QUANT_TYPES:
            refuse("act_precision", act_precision, "static quantization calibrates int8 or uint8 activations",
                   "use act_precision int8 or uint8")
        return f"static_{precision}", {"type": "OnnxStaticQuantization", "config": {
            "data_config": data["name"], "quant_format": "QDQ" if use_qdq_encoding else "QOperator",
            "weight_type": QUANT_TYPES[precision], "activation_type": QUANT_TYPES[act_precision]}}
    if bits == 8:
        refuse("precision", precision, EIGHT_BIT_REFUSALS[algorithm], f"use precision int4 with {algorithm}, or algorithm rtn")
    if algorithm == "gptq" and data is None:
        refuse("algorithm", algorithm, "gptq calibrates on data, and no dataset is given",
               "give data_name (with subset/split or data_files), or use algorithm rtn")
    if algorithm in ("rtn", "hqq") and data is not None:
        refuse("data_name", data["load_dataset_config"]["data_name"], f"{algorithm} at {bits} bits uses no data",
               "drop the data arguments, or use algorithm gptq")
    config = {"algorithm": algorithm, "bits": bits}
    if algorithm != "hqq":  # hqq always fits a zero point per block
        config["is_symmetric"] = symmetric
    if data is not None:
        config["data_config"] = data["name"]
    return f"{algorithm}_{precision}", {"type": "OnnxWeightOnlyQuantization", "config": config}
