"""What the workflow functions share: the input model, data configs, refusals, logging, and running
the recipe they build through the one engine (olive_systems.api.run), saved as YAML on request.

Nothing heavy is imported at module level: the command line builds its parsers from these modules.
"""

from __future__ import annotations

import contextvars
import logging
import re
from pathlib import Path
from typing import Callable, Literal

from ..errors import RecipeError
from ..models import is_generative
from ..output import WorkflowOutput

# The precisions the seed's functions name; each function refuses those it cannot honour.
Precision = Literal["int4", "int8", "int16", "int32", "uint4", "uint8", "uint16", "uint32",
                    "fp4", "fp8", "fp16", "fp32", "nf4"]
LogLevel = Literal[0, 1, 2, 3, 4]
LOG_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)

LOG = logging.getLogger("olive_systems.workflows")
# Where engine events go: the command line puts its live progress display here; without one they
# go to the "olive_systems.workflows" logger (failures at ERROR, finished steps at INFO).
EVENT_SINK: contextvars.ContextVar[Callable[[dict], None] | None] = contextvars.ContextVar(
    "olive_systems_workflow_events", default=None)


# ---- refusals: an argument that cannot be honoured stops the call before any work ----

_NOT_HONOURED = {
    "adapter_path": ("olive-systems does not apply PEFT adapters",
                     "merge the adapter first (peft: model.merge_and_unload().save_pretrained(DIR)) and give DIR"),
    "model_script": ("the workflow functions load Hugging Face folders, GGUF files and ONNX models, not a model script",
                     "save the model with save_pretrained() and give that folder, or write a recipe with "
                     "input_model.model_script / io_config / dummy_inputs_func and run it with `olive-systems run`"),
    "script_dir": ("the workflow functions do not load model scripts (script_dir goes with model_script)",
                   "drop script_dir; see model_script"),
    "implementation": ("olive-systems has one implementation of each algorithm (onnxruntime's quantizers)",
                       "drop implementation"),
    "memory": ("olive-systems does not cap accelerator memory", "drop memory"),
    "num_splits": ("splitting a model into several ONNX graphs is not implemented", "drop num_splits"),
    "cost_model": ("splitting a model by a cost model is not implemented", "drop cost_model"),
    "mixed_precision_overrides_config": (
        "per-node precision overrides are not implemented",
        "drop it; to keep nodes in float, save the recipe (save_config_file) and set nodes_to_exclude "
        "or op_types_to_exclude on its quantization pass"),
}


def refuse_unhonoured(args: dict, names: tuple[str, ...]) -> None:
    """RecipeError naming every argument of `names` that was given (not None/False/empty)."""
    given = [name for name in names if args.get(name) not in (None, False, "", [], ())]
    if given:
        raise RecipeError("\n".join(f"{name}={args[name]!r}: {_NOT_HONOURED[name][0]}" for name in given),
                          "; ".join(_NOT_HONOURED[name][1] for name in given))


def refuse(argument: str, value, why: str, fix: str):
    raise RecipeError(f"{argument}={value!r}: {why}", fix)


# ---- logging ----

class _Handler(logging.StreamHandler):
    """Marks the handler a workflow call adds, so that a second call does not add another."""


def configure_logging(log_level) -> int:
    """log_level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL) for the olive_systems loggers; a handler
    is added only when the application has configured no logging of its own."""
    if isinstance(log_level, bool) or log_level not in range(len(LOG_LEVELS)):
        refuse("log_level", log_level, "is not one of 0-4", "0 DEBUG, 1 INFO, 2 WARNING, 3 ERROR, 4 CRITICAL")
    level = LOG_LEVELS[log_level]
    logger = logging.getLogger("olive_systems")
    logger.setLevel(level)
    if not logging.getLogger().handlers and not any(isinstance(h, _Handler) for h in logger.handlers):
        handler = _Handler()
        handler.setFormatter(logging.Formatter("[olive-systems %(levelname)s] %(message)s"))
        logger.addHandler(handler)
    return level


def log_event(event: dict) -> None:
    kind, name = event["kind"], event["name"]
    if kind == "failed":
        LOG.error("%s failed: %s", name, event.get("error"))
    elif kind == "warning":
        LOG.warning("%s", name)
    elif kind == "done":
        LOG.info("%s %s (%.1fs)", event.get("step", ""), name, event.get("seconds", 0.0))
    elif kind == "cached":
        LOG.info("%s %s (from cache)", event.get("step", ""), name)
    elif kind == "log":
        LOG.debug("%s: %s", name, event.get("message"))
    else:
        LOG.debug("%s %s", kind, name)


# ---- the input model ----

def input_model(model_name_or_path: str, task: str, trust_remote_code: bool = False) -> dict:
    """The recipe's input_model for a local folder or file, an azureml: reference, or a Hugging Face
    Hub name (fetched with huggingface_hub, which honours HF_HUB_OFFLINE and its local cache)."""
    text = str(model_name_or_path)
    if text.startswith("azureml:"):
        spec = {"type": "HfModel", "model_path": text, "task": task}
    else:
        path = Path(text).expanduser()
        if not path.exists():
            path = _from_hub(text)
        path = path.resolve()
        if path.is_file() and path.suffix == ".onnx":
            if path.name != "model.onnx":
                raise RecipeError(f"model_name_or_path: ONNX model files must be named model.onnx ({path.name})",
                                  "rename it model.onnx (its external data keeps its name) or give its folder")
            spec = {"type": "OnnxModel", "model_path": str(path.parent), "task": task}
        elif path.is_file() and path.suffix == ".gguf":
            spec = {"type": "HfModel", "model_path": str(path.parent), "gguf_file": path.name, "task": task}
        elif path.is_dir() and (path / "model.onnx").is_file():
            spec = {"type": "OnnxModel", "model_path": str(path), "task": task}
        elif path.is_dir():
            spec = {"type": "HfModel", "model_path": str(path), "task": task}
        else:
            raise RecipeError(f"model_name_or_path: '{text}' is neither a model folder, a .gguf file nor a model.onnx",
                              "give a Hugging Face model folder, a .gguf file, or an ONNX model (model.onnx or its folder)")
    if trust_remote_code:
        if spec["type"] != "HfModel":
            refuse("trust_remote_code", True, "applies to Hugging Face models only", "drop trust_remote_code")
        if not _input_model_accepts("trust_remote_code"):
            refuse("trust_remote_code", True, "this olive-systems loads Hugging Face models without remote code",
                   "use a model whose architecture transformers ships")
        spec["trust_remote_code"] = True
    return spec


def _from_hub(name: str) -> Path:
    if not re.fullmatch(r"[\w][\w.-]*(/[\w][\w.-]*)?", name):
        raise RecipeError(f"model_name_or_path: '{name}' does not exist", "give an existing path or a Hugging Face model name")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, ignore_patterns=["*.msgpack", "*.h5", "*.ot", "*.tflite"]))
    except Exception as exc:  # not found, offline and not cached, no access: the user needs the reason
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecipeError(f"model_name_or_path: '{name}' is not a local path and could not be fetched from the "
                          f"Hugging Face Hub ({reason})",
                          "give a local model folder, or download it first: hf download NAME --local-dir DIR") from None


def _input_model_accepts(key: str) -> bool:
    from ..recipe import recipe_schema

    return key in recipe_schema()["properties"]["input_model"]["properties"]


def hf_model_type(model: dict) -> str | None:
    """config.json's model_type beside the input model, if there is one."""
    import json

    path = Path(model["model_path"]) / "config.json"
    if model["model_path"].startswith("azureml:") or not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


# ---- data ----

_DATA_ARGUMENTS = ("subset", "split", "data_files", "text_field", "text_template", "use_chat_template", "max_seq_len",
                   "add_special_tokens", "max_samples", "batch_size", "input_cols")
_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def data_config(name: str, args: dict, task: str) -> dict | None:
    """A data config from the seed's data arguments, or None when no dataset is named. Decoder tasks
    pre-process with `text_generation` (text_field / text_template / chat template, max_seq_len);
    encoder tasks tokenize input_cols (default: [text_field] or ["text"])."""
    files = args.get("data_files")
    if isinstance(files, str):
        files = [part.strip() for part in files.split(",") if part.strip()]
    files = [str(Path(f).expanduser().resolve()) for f in files or []]
    data_name = args.get("data_name")
    if not data_name and not files:
        given = [key for key in _DATA_ARGUMENTS if key != "batch_size" and args.get(key) not in (None, False, [], "")]
        if given:
            raise RecipeError(f"{', '.join(given)}: {'describes' if len(given) == 1 else 'describe'} a dataset, "
                              "but neither data_name nor data_files is given",
                              "add data_name (a dataset name or folder; csv/json/parquet/text with data_files)")
        return None
    if not data_name:
        formats = {_FILE_FORMATS.get(Path(f).suffix.lower()) for f in files}
        if len(formats) != 1 or None in formats:
            raise RecipeError(f"data_files {files}: cannot tell their format", "add data_name: csv, json, parquet or text")
        data_name = formats.pop()
    load = {"data_name": data_name}
    for key in ("subset", "split"):
        if args.get(key):
            load[key] = args[key]
    if files:
        load["data_files"] = files
    if is_generative(task):
        if args.get("input_cols"):
            refuse("input_cols", args["input_cols"], f"task {task} reads one text per sample",
                   "give text_field (or text_template) instead")
        pre = {"type": "text_generation"}
        for key in ("text_field", "text_template", "max_seq_len", "add_special_tokens", "max_samples"):
            if args.get(key) is not None:
                pre[key] = args[key]
        if args.get("use_chat_template"):
            pre["use_chat_template"] = True
    else:
        for key in ("text_template", "use_chat_template", "add_special_tokens"):
            if args.get(key) not in (None, False):
                refuse(key, args[key], f"applies to text-generation tasks; task {task} tokenizes input_cols as they are",
                       "drop it, or give input_cols")
        if args.get("input_cols") and args.get("text_field"):
            refuse("text_field", args["text_field"], "and input_cols both name the text columns", "give one of them")
        pre = {"type": "tokenize", "input_cols": list(args.get("input_cols") or [args.get("text_field") or "text"])}
        if args.get("max_seq_len"):
            pre["max_length"] = args["max_seq_len"]
        if args.get("max_samples"):
            pre["max_samples"] = args["max_samples"]
    config = {"name": name, "load_dataset_config": load, "pre_process_data_config": pre}
    if args.get("batch_size"):
        config["dataloader_config"] = {"batch_size": args["batch_size"]}
    return config


# ---- engine section, running, saving ----

def exported_first(model: dict, name: str, entry: dict) -> dict:
    """The passes {name: entry}, after an OnnxConversion export when model is a Hugging Face model."""
    export = {"conversion": {"type": "OnnxConversion", "config": {}}} if model["type"] == "HfModel" else {}
    return {**export, name: entry}


def engine_section(args: dict) -> dict:
    engine = {
        "output_dir": str(Path(args["output_path"]).expanduser().resolve()),
        "cache_dir": str(Path(args["cache_dir"]).expanduser().resolve()),
        "log_severity_level": args["log_level"],
    }
    if args.get("container_name"):
        engine["shared_cache"] = {"container_name": args["container_name"]}
        if args.get("account_name"):
            engine["shared_cache"]["account_name"] = args["account_name"]
    elif args.get("account_name"):
        refuse("account_name", args["account_name"], "names the storage account of a shared cache, but no container",
               "add container_name")
    return engine


def run_workflow(command: str, build: Callable[[dict], dict], args: dict) -> WorkflowOutput:
    """Build the recipe (every refusal happens here, before any work), run it, save it if asked."""
    from ..api import run

    configure_logging(args["log_level"])
    recipe = build(args)
    output = run(recipe, on_event=EVENT_SINK.get() or log_event)
    if args.get("save_config_file"):
        LOG.info("recipe saved: %s", save_recipe(command, recipe))
    return output


def config_file(command: str, output_dir: str | Path) -> Path:
    return Path(output_dir) / f"{command}_config.yaml"


def save_recipe(command: str, recipe: dict) -> Path:
    """The recipe as YAML in the output folder (after the run: the folder is swapped in at its end).
    `olive-systems run --config` runs it again; it is kept when that run replaces the folder."""
    import yaml

    path = config_file(command, recipe["engine"]["output_dir"])
    header = (f"# Written by olive-systems {command}. Edit it and run it again with:\n"
              f"#   olive-systems run --config {path}\n")
    path.write_text(header + yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False))
    return path
