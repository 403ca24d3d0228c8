"""generate_cost_model: a CSV of each module's parameter count and weight bytes at a precision, the
input of model splitting by memory (the SplitModel pass's cost_model).

A Hugging Face model is built from its config on torch's meta device: no weights are read, so a
70B model costs what its config.json does. A PyTorch model (model_script + model_loader) is loaded
by its loader.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Literal

from ..errors import RecipeError
from .common import LogLevel, configure_logging, refuse

WeightPrecision = Literal["fp32", "fp16", "fp8", "int32", "uint32", "int16", "uint16", "int8", "uint8",
                          "int4", "uint4", "nf4", "fp4"]
# Bytes per weight of a matrix (Linear, Conv, Embedding) at each precision. Vectors (biases, norms)
# stay float: fp16 at fp16, else fp32, as quantizers leave them.
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "fp8": 1, "int32": 4, "uint32": 4, "int16": 2, "uint16": 2,
                   "int8": 1, "uint8": 1, "int4": 0.5, "uint4": 0.5, "nf4": 0.5, "fp4": 0.5}
COST_MODEL_FILE = "cost_model.csv"
HEADER = ("module", "num_params", "num_bytes")


def generate_cost_model(
    model_name_or_path: str | None = None,
    *,
    task: str = "text-generation-with-past",
    trust_remote_code: bool = False,
    model_script: str | None = None,
    script_dir: str | None = None,
    model_loader: str = "_model_loader",
    output_path: str = ".",
    weight_precision: WeightPrecision = "fp32",
    log_level: LogLevel = 3,
) -> Path:
    """Write a cost model: a CSV of each module's parameter count and memory at a weight precision.

    One row per module that holds parameters itself (module, num_params, num_bytes), in the model's
    order; a weight shared by two modules (tied embeddings) counts once. SplitModel's cost_model
    reads it to pack modules into parts of at most `memory` bytes.

    Args:
        model_name_or_path: Hugging Face model folder or Hub id; for a PyTorch model, what its loader is given.
        task: Task of the Hugging Face model (decides its head: text-generation-with-past, feature-extraction, ...).
        trust_remote_code: Run the model repository's own code to build it (Hugging Face models).
        model_script: Python script whose model_loader builds a PyTorch model (instead of a Hugging Face model).
        script_dir: Folder put on sys.path for model_script's own imports.
        model_loader: Function in model_script: model_loader(model_name_or_path) -> torch.nn.Module.
        output_path: The CSV file to write (a path ending in .csv), or a folder to write cost_model.csv in.
        weight_precision: Precision of the weight matrices (fp32, fp16, int8, int4, ...).
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).

    Returns:
        The path of the CSV written.
    """
    configure_logging(log_level)
    if weight_precision not in PRECISION_BYTES:
        refuse("weight_precision", weight_precision, "is not a precision", f"use one of {list(PRECISION_BYTES)}")
    target = Path(output_path).expanduser()
    target = target if target.suffix == ".csv" else target / COST_MODEL_FILE
    if target.parent.exists() and not target.parent.is_dir():
        refuse("output_path", output_path, "is inside a file", "give a .csv path or a folder")
    if model_script:
        module = _script_model(model_name_or_path, model_script, script_dir, model_loader)
    elif model_name_or_path:
        module = _hf_model_skeleton(model_name_or_path, task, trust_remote_code)
    else:
        raise RecipeError("generate_cost_model needs model_name_or_path (a Hugging Face model) or model_script",
                          "give a model folder or Hub id, or model_script with its model_loader")
    rows = module_costs(module, weight_precision)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    partial.replace(target)  # whole or not at all
    return target


def module_costs(module, weight_precision: str) -> list[tuple[str, int, int]]:
    """(module name, parameters, bytes) of every module holding parameters itself."""
    width = PRECISION_BYTES[weight_precision]
    vector_width = 2 if weight_precision == "fp16" else 4
    seen, rows = set(), []
    for name, child in module.named_modules():
        params = [p for p in child.parameters(recurse=False) if id(p) not in seen]
        if not params:
            continue
        seen.update(id(p) for p in params)
        count = sum(p.numel() for p in params)
        size = sum(p.numel() * (width if p.dim() >= 2 else vector_width) for p in params)
        rows.append((name, count, math.ceil(size)))
    return rows


def _hf_model_skeleton(model_name_or_path: str, task: str, trust_remote_code: bool):
    """The model's modules on the meta device: shapes without weights."""
    import torch
    import transformers

    from ..models import HF_TASKS, canonical_task
    from .common import input_model

    spec = input_model(model_name_or_path, task, trust_remote_code)
    if spec["type"] != "HfModel" or spec.get("gguf_file"):
        refuse("model_name_or_path", model_name_or_path, "is not a Hugging Face model folder or Hub id",
               "give the folder save_pretrained wrote (or a PyTorch model with model_script)")
    task = canonical_task(task)
    if task not in HF_TASKS:
        refuse("task", task, "is not a task olive-systems knows", f"use one of {sorted(HF_TASKS)}")
    folder = Path(spec["model_path"])
    if folder.is_dir() and not (folder / "config.json").is_file():
        refuse("model_name_or_path", model_name_or_path, "has no config.json: it is not a Hugging Face model folder",
               "give the folder save_pretrained wrote")
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return getattr(transformers, HF_TASKS[task][0]).from_config(config, trust_remote_code=trust_remote_code)


def _script_model(model_path: str | None, model_script: str, script_dir: str | None, model_loader: str):
    import torch

    from ..pytorch_model import load_script, script_function

    script = Path(model_script).expanduser().resolve()
    if not script.is_file():
        refuse("model_script", model_script, "does not exist", "give the path of the .py file that builds the model")
    if script_dir and not Path(script_dir).is_dir():
        refuse("script_dir", script_dir, "is not a folder", "give the folder model_script imports from")
    module = load_script(script, Path(script_dir).resolve() if script_dir else None)
    model = script_function(module, script, model_loader, "model_loader")(model_path)
    if not isinstance(model, torch.nn.Module):
        refuse("model_loader", model_loader, f"returned {type(model).__name__}, not a torch.nn.Module",
               "return the module from the loader")
    return model
