"""Checks of a normalized recipe against the files it names, made before any work: each returns every
problem it finds (a RecipeError naming the place and the fix), so a user fixes them all in one go.

They read headers and small files only: no torch, no datasets, no onnx import (validate stays fast).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import string
from pathlib import Path

from .errors import RecipeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
# What transformers' from_pretrained reads weights from (sharded ones through an index beside them).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.index.json")
# ModelProto fields in a serialized ONNX file: protobuf writes them in field order, ir_version (field 1,
# a varint: tag byte 0x08) first; every model ONNX Runtime loads has one.
ONNX_FIRST_BYTE = 0x08


def _did_you_mean(word, choices) -> str:
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def recipe_problems(recipe: dict, name: str) -> list[RecipeError]:
    """Every problem the checks below find, in recipe order."""
    from .passes.session_tuning_options import recipe_problems as session_tuning_problems  # its EP options

    return [*metric_problems(recipe, name), *input_model_problems(recipe, name), *io_config_problems(recipe, name),
            *data_problems(recipe, name), *session_tuning_problems(recipe, name), *fixed_shape_problems(recipe, name)]


# ---- metrics ----

def metric_problems(recipe: dict, name: str) -> list[RecipeError]:
    """A sub-type the metric type does not have (latency p55, accuracy perplexity) fails minutes later
    in the evaluation; custom metrics name their own."""
    from .evaluation.metrics import METRIC_TYPES

    problems = []
    for evaluator, entry in recipe.get("evaluators", {}).items():
        for index, metric in enumerate(entry.get("metrics", [])):
            where = f"{name}: evaluators.{evaluator}.metrics[{index}]"
            data = recipe.get("data_configs", {}).get(metric.get("data_config"))
            pre = (data or {}).get("pre_process_data_config") or {}
            if metric["type"] == "accuracy" and pre.get("type") == "tokenize" and not pre.get("label_col"):
                problems.append(RecipeError(f"{where}: an accuracy metric needs labels, and data config "
                                            f"'{metric['data_config']}' has no label_col",
                                            f"set pre_process_data_config.label_col in data config '{metric['data_config']}'"))
            known = METRIC_TYPES.get(metric["type"])
            if not known or metric.get("backend") == "huggingface_metrics":  # custom, or evaluate's own metric names
                continue
            for sub_index, sub in enumerate(metric["sub_types"]):
                if sub["name"] not in known:
                    problems.append(RecipeError(
                        f"{where}.sub_types[{sub_index}].name: "
                        f"'{sub['name']}' is not a sub-type of {metric['type']} metrics{_did_you_mean(sub['name'], known)}",
                        f"use one of {', '.join(known)}"))
    return problems


def fixed_shape_problems(recipe: dict, name: str) -> list[RecipeError]:
    """A flow that fixes the export's batch_size or sequence_length dimension (DynamicToFixedShape's
    dim_param, or the export's fixed_param_dict) cannot serve a workload shape of another size: its timing would fail after every
    pass and quality evaluation has run."""
    evaluator = recipe.get("evaluators", {}).get((recipe.get("engine") or {}).get("evaluator"), {})
    shapes = [(metric["name"], shape) for metric in evaluator.get("metrics", []) if metric["type"] in ("latency", "throughput")
              for shape in metric.get("workload") or []]
    problems = []
    for flow_index, flow in enumerate(recipe.get("pass_flows", [])):
        fixed = {}  # "batch_size" / "sequence_length" -> (size, the pass that fixed it)
        for pass_name in flow:
            entry = recipe["passes"].get(pass_name) or {}
            config = entry.get("config") or {}
            sizes = {}
            if entry.get("type") == "DynamicToFixedShape":
                # input_shapes name no dimension: which one is the batch is the model's business, found at timing
                if isinstance(config.get("dim_param"), list) and isinstance(config.get("dim_value"), list):
                    sizes.update(zip(config["dim_param"], config["dim_value"]))
            elif entry.get("type") == "OnnxConversion" and isinstance(config.get("fixed_param_dict"), dict):
                sizes.update(config["fixed_param_dict"])
            fixed.update({dim: (size, pass_name) for dim, size in sizes.items()
                          if dim in ("batch_size", "sequence_length") and isinstance(size, int)})
        for metric_name, shape in shapes:
            for dim, (size, pass_name) in fixed.items():
                if shape.get(dim) not in (None, size):
                    problems.append(RecipeError(
                        f"{name}: pass_flows[{flow_index}]: pass '{pass_name}' fixes {dim} to {size}, and metric "
                        f"'{metric_name}' times {dim} {shape[dim]}: that flow's model cannot run at that shape",
                        f"time that flow only at {dim} {size} (a metric's own workload), or leave {dim} dynamic"))
    return problems


# ---- the input model ----

def input_model_problems(recipe: dict, name: str) -> list[RecipeError]:
    """An empty or wrong model folder, an ONNX file that is not ONNX, a function the recipe names but
    its model_script lacks."""
    spec = recipe["input_model"]
    path_text = spec.get("model_path") or ""
    problems = []
    for key in ("io_config", "dummy_inputs_func"):
        func = spec.get(key)
        if isinstance(func, str):
            problems += _function_problems(spec.get("model_script"), func, f"{name}: input_model.{key}")
    if spec["type"] not in ("HfModel", "OnnxModel") or not path_text or path_text.startswith("azureml:") \
            or spec.get("gguf_file"):
        return problems  # a PyTorchModel has its own checks (pytorch_model.check_spec)
    path = Path(path_text)
    where = f"{name}: input_model.model_path"
    if not path.exists():  # reported where the path was resolved
        return problems
    if path.is_dir() and not any(path.iterdir()):
        return problems + [RecipeError(f"{where}: folder {path} is empty",
                                       "point model_path at the folder holding the model files")]
    if spec["type"] == "OnnxModel":
        onnx_file = path / "model.onnx" if path.is_dir() else path
        if path.is_dir() and not onnx_file.is_file():
            found = sorted(p.name for p in path.glob("*.onnx"))
            return problems + [RecipeError(f"{where}: folder {path} holds no model.onnx" +
                                           (f" (it has {', '.join(found)})" if found else ""),
                                           "rename the file to model.onnx" if found else
                                           "point model_path at the folder holding model.onnx")]
        if onnx_file.name != "model.onnx":
            problems.append(RecipeError(f"{where}: ONNX model files must be named model.onnx ({onnx_file.name})",
                                        "point model_path at the folder holding model.onnx, or rename the file"))
        problem = _not_onnx(onnx_file)
        if problem:
            problems.append(RecipeError(f"{where}: {onnx_file} is not an ONNX model ({problem})",
                                        "give the .onnx file an exporter wrote (torch.onnx.export, onnx.save)"))
    elif spec["type"] == "HfModel" and path.is_file():
        problems.append(RecipeError(f"{where}: {path} is a file; an HfModel is a folder (config.json, weights, tokenizer)",
                                    "point model_path at the folder save_pretrained wrote (or give gguf_file)"))
    elif spec["type"] == "HfModel" and (path / "config.json").is_file() and not spec.get("model_script") \
            and not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        problems.append(RecipeError(f"{where}: folder {path} has a config.json but no weights (none of "
                                    f"{', '.join(WEIGHT_FILES)})",
                                    "save the model itself there: model.save_pretrained(folder)"))
    return problems


def _not_onnx(path: Path) -> str | None:
    """Why a file cannot be an ONNX model, from its first bytes; None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "the file is empty"
    if head[0] != ONNX_FIRST_BYTE:
        return f"it starts with {head!r}, not an ONNX protobuf"
    return None


def _function_problems(script: str | None, func: str, where: str) -> list[RecipeError]:
    """A function named in the recipe must be defined in model_script (read with ast, never imported)."""
    if not script:
        return [RecipeError(f"{where}: '{func}' names a function, but input_model has no model_script",
                            "add model_script: the .py file defining it (or give io_config as a mapping)")]
    try:
        tree = ast.parse(Path(script).read_text(), filename=script)
    except (OSError, SyntaxError) as exc:
        return [RecipeError(f"{where}: model_script {script} cannot be read: {exc}", "fix the script")]
    defined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if func not in defined:
        return [RecipeError(f"{where}: model_script {Path(script).name} defines no function '{func}'"
                            f"{_did_you_mean(func, defined)}", "define it there or correct the name")]
    return []


def io_config_problems(recipe: dict, name: str) -> list[RecipeError]:
    """dynamic_axes may only name inputs and outputs the io_config declares, by axis index."""
    io_config = recipe["input_model"].get("io_config")
    if not isinstance(io_config, dict):
        return []
    declared = list(io_config.get("input_names", [])) + list(io_config.get("output_names", []))
    problems = []
    for kind in ("input_names", "output_names"):
        repeated = sorted({n for n in io_config.get(kind, []) if io_config[kind].count(n) > 1})
        if repeated:
            problems.append(RecipeError(f"{name}: input_model.io_config.{kind}: {repeated} named twice",
                                        "name each input and output once"))
    for key, axes in (io_config.get("dynamic_axes") or {}).items():
        where = f"{name}: input_model.io_config.dynamic_axes.{key}"
        if key not in declared:
            problems.append(RecipeError(f"{where}: '{key}' is neither an input nor an output name{_did_you_mean(key, declared)}",
                                        f"use one of {', '.join(declared)}"))
        bad = [axis for axis in axes if not str(axis).isdigit()]
        if bad:
            problems.append(RecipeError(f"{where}: axes {bad} are not axis indices",
                                        "key each dimension name by its axis index, e.g. {0: batch, 1: sequence}"))
    return problems


# ---- data configs ----

def data_problems(recipe: dict, name: str) -> list[RecipeError]:
    problems = []
    for config_name, dc in recipe.get("data_configs", {}).items():
        problems += _data_config_problems(recipe, dc, f"{name}: data config '{config_name}'")
    return problems


def _data_config_problems(recipe: dict, dc: dict, where: str) -> list[RecipeError]:
    if dc.get("type") == "DummyDataContainer":  # no dataset, no tokenizer: names from the model when it is built
        load = dc["load_dataset_config"]
        given = {key: len(load[key]) for key in ("input_names", "input_types") if load.get(key)}
        if any(count != len(load["input_shapes"]) for count in given.values()):
            return [RecipeError(f"{where}: load_dataset_config has {len(load['input_shapes'])} input_shapes and "
                                + " and ".join(f"{count} {key}" for key, count in given.items()),
                                "give one name and one type per shape (names default to the model's inputs, in order)")]
        return []
    load = dc["load_dataset_config"]
    pre = dc["pre_process_data_config"]
    problems = []
    columns = None
    kind = load["data_name"]
    files = load.get("data_files") or []
    if kind in ("csv", "json", "text"):
        if not files:
            return [RecipeError(f"{where}: load_dataset_config: data_name {kind} needs data_files",
                                "add data_files: the file(s) to read")]
        split = str(load.get("split", "train")).split("[")[0]
        if split != "train":  # files given this way load as one split, named train
            problems.append(RecipeError(f"{where}: load_dataset_config.split '{split}': {kind} data_files load as the "
                                        "one split 'train'", "set split: train (or train[:N] for the first N rows); "
                                        "pick rows with filter"))
        for file in files:
            found, problem = _file_columns(kind, Path(file))
            if problem:
                problems.append(RecipeError(f"{where}: {file} {problem}", "give a data file with a header and rows"))
            elif found is not None:
                columns = found if columns is None else [c for c in columns if c in found]
    if columns is not None and pre["type"] == "tokenize" and not pre.get("input_cols"):  # else found at load time
        problems.append(RecipeError(f"{where}: pre_process_data_config.input_cols is not set: tokenize needs the text "
                                    "columns", f"set input_cols to some of the data's columns {columns}"))
    if columns is not None:
        wanted = [(f"load_dataset_config.filter.{c}", c) for c in load.get("filter") or {}]
        wanted += _columns_used(pre)
        for key, column in wanted:
            if column not in columns:
                problems.append(RecipeError(f"{where}: {key}: '{column}' is not a column of the data "
                                            f"(its columns: {', '.join(columns)}){_did_you_mean(column, columns)}",
                                            "name a column the file's header has"))
    if pre["type"] in ("tokenize", "text_generation"):
        problems += _tokenizer_problems(recipe, dc, where)
    return problems


def _columns_used(pre: dict) -> list[tuple[str, str]]:
    """(recipe key, column) for every column the built-in pre-processing reads."""
    if pre["type"] == "tokenize":
        used = [(f"pre_process_data_config.input_cols[{i}]", c) for i, c in enumerate(pre.get("input_cols") or [])]
        if pre.get("label_col"):
            used.append(("pre_process_data_config.label_col", pre["label_col"]))
        return used
    if pre["type"] == "text_generation":
        template = pre.get("text_template")
        if template:
            fields = {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(template) if field}
            return [("pre_process_data_config.text_template", f) for f in sorted(fields)]
        return [("pre_process_data_config.text_field", pre.get("text_field", "text"))]
    return []  # a user function reads what it likes


def _file_columns(kind: str, path: Path) -> tuple[list[str] | None, str | None]:
    """(columns, None), (None, why the file is unusable), or (None, None) when it cannot be told cheaply."""
    if not path.is_file():
        return None, None  # a missing file is reported where paths are resolved; a pattern is left to datasets
    if kind == "text":
        return (["text"], None) if path.stat().st_size else (None, "is empty")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if not text.strip():
        return None, "is empty"
    if kind == "csv":
        lines = text.splitlines()
        header = next(csv.reader(io.StringIO(lines[0])))
        if not any(line.strip() for line in lines[1:]):
            return None, f"has a header ({', '.join(header)}) but no rows: it is empty"
        return header, None
    # json: JSON lines (one object per line), or one array of objects
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            if len(head) == 1 << 16:  # a large array: reading it whole is work for datasets
                return None, None
            rows = json.loads(stripped)
            if not rows:
                return None, "is an empty JSON array"
            first = rows[0]
        else:
            first = json.loads(stripped.splitlines()[0])
    except json.JSONDecodeError as exc:
        return None, f"is not JSON or JSON lines: {exc.msg} (line {exc.lineno})"
    return (list(first), None) if isinstance(first, dict) else (None, None)


def _tokenizer_problems(recipe: dict, dc: dict, where: str) -> list[RecipeError]:
    """The tokenizer a data config uses (its own folder, or the input model's) must be there."""
    if dc.get("tokenizer"):
        folder, whose = Path(dc["tokenizer"]), "tokenizer folder"
    else:
        spec = recipe["input_model"]
        if spec["type"] != "OnnxModel" or not spec.get("model_path") or \
                spec["model_path"].startswith("azureml:") or spec.get("gguf_file") or spec.get("model_script"):
            return []  # HfModel: its folder's tokenizer is checked with the model (recipe.check_input_model);
            # else read from the downloaded asset / the GGUF file / decided by the script
        path = Path(spec["model_path"])
        if not path.exists():
            return []  # reported where the path was resolved
        folder, whose = (path if path.is_dir() else path.parent), "input model folder"
    if not folder.is_dir() or (whose == "input model folder" and not any(folder.iterdir())):
        return []  # reported as a missing path or an empty model folder
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        return []
    return [RecipeError(f"{where}: the {whose} {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
                        "set tokenizer: in the data config to a folder holding one, or save it beside the model: "
                        "AutoTokenizer.from_pretrained(...).save_pretrained(folder)")]
