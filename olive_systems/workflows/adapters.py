"""Adapters: generate_adapter (a model workflow on the one engine), convert_adapters and
extract_adapters (utility functions: they write one weights file directly, with the same library
code the ExtractAdapters pass uses, llm/adapters.py).

A weights file holds, under peft's names, the tensors an ExtractAdapters model takes as inputs
(lora_A transposed; lora_B transposed with its scaling folded in; int4 in MatMulNBits' layout): see
olive_systems/llm/adapters.py for the layout of each format.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Literal

from ..errors import RecipeError
from .common import (LOG, LogLevel, WorkflowOutput, _input_model_accepts, configure_logging, engine_section,
                     exported_first, input_model, refuse, run_workflow)

AdapterFormat = Literal["pt", "numpy", "safetensors", "onnx_adapter"]
AdapterDtype = Literal["float32", "float16"]
Int4BlockSize = Literal[16, 32, 64, 128, 256]
Int4Mode = Literal["symmetric", "asymmetric"]


def generate_adapter(
    model_name_or_path: str,
    *,
    task: str = "text-generation-with-past",
    output_path: str = "generated-adapter",
    adapter_type: Literal["lora", "dora", "loha"] = "lora",
    adapter_format: AdapterFormat = "onnx_adapter",
    dtype: AdapterDtype | None = None,
    dynamic_lora_r: bool | None = None,
    quantize_int4: bool = False,
    int4_block_size: Int4BlockSize = 32,
    int4_quantization_mode: Int4Mode = "symmetric",
    account_name: str | None = None,
    container_name: str | None = None,
    log_level: LogLevel = 3,
    save_config_file: bool = False,
    cache_dir: str = ".olive-cache",
) -> WorkflowOutput:
    """Generate an adapter-serving ONNX model: its LoRA weights become inputs, the exported adapter a weights file.

    One pass, ExtractAdapters, on an ONNX export of a base with its peft LoRA kept apart. The
    candidate folder holds model.onnx (each LoRA weight an input whose default adds nothing: without
    an adapter it runs the base), adapter_weights.<ext> (the exported adapter) and, for a decoder,
    genai_config.json: onnxruntime-genai's og.Adapters and onnxruntime's
    RunOptions.add_active_adapter load .onnx_adapter files (convert_adapters makes them for other
    adapters of the same base) and switch them per request.

    Args:
        model_name_or_path: ONNX model (model.onnx or its folder) exported from a base with its LoRA adapter unmerged.
        task: Task of the model (text-generation-with-past, text-generation, feature-extraction, ...).
        output_path: Output folder of the run.
        adapter_type: Adapter type: lora (dora and loha are refused, with the reason).
        adapter_format: Format of the exported adapter's weights file (onnx_adapter is what the runtimes load).
        dtype: dtype of the adapter inputs and weights (int4: of the scales); default: the model's.
        dynamic_lora_r: Symbolic LoRA rank (any rank at run time); default: dynamic, fixed with quantize_int4.
        quantize_int4: Quantize the adapter weights to int4 blocks served by MatMulNBits (fixed rank).
        int4_block_size: int4 block size, a power of two from 16 to 256.
        int4_quantization_mode: int4 quantization mode: symmetric or asymmetric (a zero point per block).
        account_name: Azure storage account of the shared cache.
        container_name: Azure Blob container of the shared cache.
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).
        save_config_file: Also write the recipe this call runs as <output_path>/generate_adapter_config.yaml.
        cache_dir: Cache folder of the run.

    Returns:
        The run's WorkflowOutput.
    """
    return run_workflow("generate_adapter", build, dict(locals()))


def build(args: dict) -> dict:
    from ..llm.adapters import ADAPTER_SUBFOLDER, ADAPTER_CONFIG, check_adapter_type, check_dtype, check_format

    check_adapter_type(args["adapter_type"])
    check_format(args["adapter_format"])
    if args["dtype"] is not None:
        check_dtype(args["dtype"])
    config = {"adapter_type": args["adapter_type"], "adapter_format": args["adapter_format"], "dtype": args["dtype"],
              "dynamic_lora_r": args["dynamic_lora_r"], "quantize_int4": bool(args["quantize_int4"])}
    config.update(_int4_options(args))
    if config["quantize_int4"] and args["dynamic_lora_r"]:
        refuse("dynamic_lora_r", True, "int4 adapter weights are served by MatMulNBits, which fixes the rank",
               "drop dynamic_lora_r, or quantize_int4")
    engine = engine_section(args)
    model = input_model(args["model_name_or_path"], args["task"])  # may download: refusals first
    if model["type"] == "HfModel":
        folder = Path(model["model_path"])
        if not (folder / ADAPTER_SUBFOLDER / ADAPTER_CONFIG).is_file():
            refuse("model_name_or_path", args["model_name_or_path"],
                   f"is a Hugging Face model without a peft adapter in {ADAPTER_SUBFOLDER}/ (generate_adapter takes an "
                   "ONNX model exported with its LoRA kept apart)", "give that ONNX model, or a model folder holding "
                   f"its adapter in {ADAPTER_SUBFOLDER}/")
        if not _input_model_accepts("adapter_path"):
            refuse("model_name_or_path", args["model_name_or_path"],
                   "is a Hugging Face model with its adapter, and this olive-systems cannot yet give a recipe's "
                   "input_model an adapter", "export it first (the ONNX model of the base with its LoRA unmerged)")
        model["adapter_path"] = ADAPTER_SUBFOLDER
    else:
        _check_lora_weights(Path(model["model_path"]), args["model_name_or_path"])
    passes = exported_first(model, "extract_adapters", {"type": "ExtractAdapters", "config": config})
    return {
        "description": f"olive-systems generate_adapter ({args['adapter_type']}, {args['adapter_format']}): "
                       f"{args['model_name_or_path']}",
        "input_model": model,
        "passes": passes,
        "pass_flows": [list(passes)],
        "engine": engine,
    }


def _check_lora_weights(folder: Path, given: str) -> None:
    """Refuse, before any work, an ONNX model without LoRA weights named after peft parameters."""
    import onnx

    from ..llm.adapters import LORA_KEY

    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    if any(LORA_KEY.match(i.name) for i in proto.graph.input):
        refuse("model_name_or_path", given, "serves adapters already: its LoRA weights are graph inputs",
               "load adapter files on it (convert_adapters makes them for other adapters of its base)")
    if not any(LORA_KEY.match(t.name) for t in proto.graph.initializer):
        refuse("model_name_or_path", given, "has no LoRA weights named after peft parameters (<module>.lora_A.weight)",
               "give the export of a base with its peft adapter applied unmerged")


def _int4_options(args: dict) -> dict:
    """int4 settings, checked (the block size first: a bad one is refused whatever else is given)."""
    from ..llm.adapters import check_int4

    check_int4(args["int4_block_size"], args["int4_quantization_mode"])
    if args["quantize_int4"]:
        return {"int4_block_size": args["int4_block_size"], "int4_quantization_mode": args["int4_quantization_mode"]}
    given = {k: args[k] for k, default in (("int4_block_size", 32), ("int4_quantization_mode", "symmetric"))
             if args[k] != default}
    if given:
        raise RecipeError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())}: int4 settings, but quantize_int4 is not set",
                          "add quantize_int4, or drop them")
    return {}


# ---- utility functions: one weights file, written directly ----

def convert_adapters(
    adapter_path: str,
    adapter_format: AdapterFormat = "onnx_adapter",
    *,
    output_path: str,
    dtype: AdapterDtype = "float32",
    quantize_int4: bool = False,
    int4_block_size: Int4BlockSize = 32,
    int4_quantization_mode: Int4Mode = "symmetric",
    log_level: LogLevel = 3,
) -> Path:
    """Convert a peft LoRA adapter to a weights file that ExtractAdapters models (generate_adapter) load.

    The file holds the adapter's tensors in the layout the model takes them (lora_A transposed,
    lora_B transposed with the scaling folded in, under peft's names); onnx_adapter files are what
    onnxruntime (LoraAdapter, RunOptions.add_active_adapter) and onnxruntime-genai (og.Adapters)
    load. With quantize_int4 the weights are int4 blocks in MatMulNBits' layout, for a model
    generated with quantize_int4 and the same block size and mode.

    Args:
        adapter_path: peft adapter folder (adapter_config.json and adapter_model.safetensors), a model folder
            holding it in adapter/, or a Hugging Face Hub id.
        adapter_format: Format of the file: pt, numpy (.npz), safetensors or onnx_adapter.
        output_path: File to write; the format's extension is added when it has none, an existing folder
            gets adapter_weights.<ext>.
        dtype: dtype of the float weights (float32 or float16); with quantize_int4, of the int4 scales.
        quantize_int4: Quantize the weights to int4 blocks (MatMulNBits layout).
        int4_block_size: int4 block size, a power of two from 16 to 256.
        int4_quantization_mode: int4 quantization mode: symmetric or asymmetric (a zero point per block).
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).

    Returns:
        The path of the file written.
    """
    from ..llm.adapters import (ADAPTER_FORMATS, adapter_file_tensors, check_dtype, check_format, read_peft_adapter,
                                save_adapter_weights)

    configure_logging(log_level)
    check_format(adapter_format)
    check_dtype(dtype)
    int4 = _int4_options({"quantize_int4": quantize_int4, "int4_block_size": int4_block_size,
                          "int4_quantization_mode": int4_quantization_mode})
    target = _target_file(output_path, adapter_format, ADAPTER_FORMATS)
    adapter = read_peft_adapter(_adapter_source(adapter_path, None, "adapter_path"))
    tensors = adapter_file_tensors(adapter, dtype, {"block_size": int4["int4_block_size"],
                                                    "mode": int4["int4_quantization_mode"]} if int4 else None)
    save_adapter_weights(tensors, target, adapter_format)
    LOG.info("%s: %d tensors (%s%s) -> %s", adapter.folder, len(tensors), dtype, ", int4" if int4 else "", target)
    return target


def extract_adapters(
    model_name_or_path: str,
    format: AdapterFormat,
    output: str,
    dtype: AdapterDtype = "float32",
    cache_dir: str | None = None,
    log_level: LogLevel = 3,
) -> Path:
    """Extract the LoRA weights of a peft model to a weights file in a folder.

    Writes <output>/adapter_weights.<ext> (the tensors an ExtractAdapters model takes, as
    convert_adapters writes them) and a copy of the adapter's adapter_config.json.

    Args:
        model_name_or_path: peft adapter folder, a model folder holding its adapter in adapter/, or a Hugging
            Face Hub id.
        format: Format of the file: pt, numpy (.npz), safetensors or onnx_adapter.
        output: Folder to write adapter_weights.<ext> and adapter_config.json in.
        dtype: dtype of the weights: float32 or float16.
        cache_dir: Folder a Hub download is cached in (default: Hugging Face's).
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).

    Returns:
        The path of the weights file written.
    """
    from ..llm.adapters import (ADAPTER_CONFIG, adapter_file_tensors, check_dtype, check_format, read_peft_adapter,
                                save_adapter_weights, weights_file_name)

    configure_logging(log_level)
    check_format(format, "format")
    check_dtype(dtype)
    folder = Path(output).expanduser()
    if folder.exists() and not folder.is_dir():
        refuse("output", output, "is a file", "give a folder (it is created when missing)")
    adapter = read_peft_adapter(_adapter_source(model_name_or_path, cache_dir, "model_name_or_path"))
    tensors = adapter_file_tensors(adapter, dtype)
    target = save_adapter_weights(tensors, folder / weights_file_name(format), format)
    config = folder / ADAPTER_CONFIG
    if config.resolve() != (adapter.folder / ADAPTER_CONFIG).resolve():
        partial = folder / f".{ADAPTER_CONFIG}.partial"
        shutil.copyfile(adapter.folder / ADAPTER_CONFIG, partial)
        partial.replace(config)
    LOG.info("%s: %d tensors (%s) -> %s", adapter.folder, len(tensors), dtype, target)
    return target


def _target_file(output_path: str, fmt: str, formats: dict) -> Path:
    path = Path(output_path).expanduser()
    extension = formats[fmt]
    if path.is_dir():
        from ..llm.adapters import weights_file_name

        return path / weights_file_name(fmt)
    other = next((f for f, ext in formats.items() if path.name.endswith(ext) and f != fmt), None)
    if other is not None:
        refuse("output_path", output_path, f"has the extension of {other} files, but adapter_format is {fmt}",
               f"name the file *{extension}, or use adapter_format {other}")
    return path if path.name.endswith(extension) else path.with_name(path.name + extension)


def _adapter_source(name: str, cache_dir: str | None, argument: str) -> Path:
    """A local folder as is; otherwise a Hugging Face Hub id, downloaded (adapter files only)."""
    path = Path(str(name)).expanduser()
    if path.exists():
        return path
    if not re.fullmatch(r"[\w][\w.-]*/[\w][\w.-]*", str(name)):
        refuse(argument, name, "does not exist", "give a peft adapter folder or a Hugging Face Hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), cache_dir=cache_dir,
                                      allow_patterns=["adapter_config.json", "adapter_model.*", "adapter/adapter_*"]))
    except Exception as exc:  # offline, not found, no access: the user needs the reason
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecipeError(f"{argument}: '{name}' is not a local folder and could not be fetched from the Hugging Face "
                          f"Hub ({reason})", "give a local peft adapter folder") from None
