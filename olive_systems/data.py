"""Data configs: load with Hugging Face `datasets`, tokenize into model inputs, post-process outputs.

One registry each for pre-processing and post-processing; a recipe may also name a function in
its user_script for either step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RecipeError
from .user_script import load_function

DATA_CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": ["HuggingfaceContainer"], "default": "HuggingfaceContainer"},
        "user_script": {"type": "string"},
        "tokenizer": {"type": "string", "description": "tokenizer folder; default: the model's own folder"},
        "load_dataset_config": {
            "type": "object",
            "properties": {
                "data_name": {"type": "string", "description": "csv, json, parquet, or a dataset folder"},
                "data_files": {"type": ["string", "array"], "items": {"type": "string"}},
                "subset": {"type": ["string", "null"]},
                "split": {"type": "string", "default": "train"},
            },
            "required": ["data_name"],
            "additionalProperties": False,
        },
        "pre_process_data_config": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "description": "tokenize, or a function in user_script"},
                "input_cols": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "label_col": {"type": ["string", "null"]},
                "max_length": {"type": "integer", "minimum": 1},
                "padding": {"enum": ["max_length", "longest"]},
                "pair_mode": {"enum": ["joint", "separate"],
                              "description": "joint: one input per row; separate: each column encoded on its own"},
                "max_samples": {"type": ["integer", "null"], "minimum": 1},
            },
            "required": ["type"],
        },
        "post_process_data_config": {
            "type": "object",
            "properties": {"type": {"type": "string", "description": "mean_pooling, cls_pooling, argmax, pair_cosine, identity, or a function"}},
            "required": ["type"],
        },
        "dataloader_config": {
            "type": "object",
            "properties": {"batch_size": {"type": "integer", "minimum": 1}},
            "additionalProperties": False,
        },
    },
    "required": ["name", "load_dataset_config", "pre_process_data_config"],
    "additionalProperties": False,
}


@dataclass
class Batches:
    """Model-ready inputs and the targets they are scored against."""

    inputs: list[dict]  # one feed dict of numpy arrays per batch
    targets: np.ndarray | None
    groups: int = 1  # texts per row when columns are encoded separately (sentence pairs: 2)


def fingerprint(data_config: dict) -> str:
    """Hash of a data config and the content of its files: the data part of every cache key."""
    digest = hashlib.sha256(json.dumps(data_config, sort_keys=True).encode())
    for name in _data_files(data_config):
        path = Path(name)
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    script = data_config.get("user_script")
    if script and Path(script).is_file():
        digest.update(Path(script).read_bytes())
    return digest.hexdigest()


def _data_files(data_config: dict) -> list[str]:
    files = data_config["load_dataset_config"].get("data_files") or []
    return [files] if isinstance(files, str) else list(files)


def load_batches(data_config: dict, model_folder: Path) -> Batches:
    import datasets

    datasets.disable_progress_bars()
    load = data_config["load_dataset_config"]
    name = data_config["name"]
    try:
        dataset = datasets.load_dataset(load["data_name"], load.get("subset"), data_files=load.get("data_files"),
                                        split=load.get("split", "train"))
    except Exception as exc:
        raise RecipeError(f"data config '{name}': cannot load dataset: {str(exc).splitlines()[0]}",
                          "check load_dataset_config (data_name, data_files, split)") from exc
    pre = dict(data_config["pre_process_data_config"])
    if pre.get("max_samples"):
        dataset = dataset.select(range(min(pre["max_samples"], len(dataset))))
    batch_size = data_config.get("dataloader_config", {}).get("batch_size", 1)
    kind = pre.pop("type")
    if kind == "tokenize":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(data_config.get("tokenizer") or model_folder)
        batches = _tokenize(dataset, tokenizer, batch_size, name, **pre)
    else:
        func = load_function(data_config.get("user_script"), kind, f"data_configs.{name}.pre_process_data_config")
        batches = func(dataset, model_folder=model_folder, batch_size=batch_size, **pre)
    return batches


def _tokenize(dataset, tokenizer, batch_size, name, input_cols, label_col=None, max_length=128,
              padding="longest", pair_mode="joint", max_samples=None) -> Batches:
    missing = [col for col in input_cols + ([label_col] if label_col else []) if col not in dataset.column_names]
    if missing:
        raise RecipeError(f"data config '{name}': columns {missing} not in dataset (has {dataset.column_names})",
                          "fix input_cols / label_col")
    columns = [list(dataset[col]) for col in input_cols]
    if pair_mode == "separate":  # every column's texts one after the other: embeddings per text
        texts, groups = [(text,) for column in columns for text in column], len(columns)
    else:
        texts, groups = list(zip(*columns)), 1
    inputs = []
    for start in range(0, len(texts), batch_size):
        chunk = [list(column) for column in zip(*texts[start:start + batch_size])]
        encoded = tokenizer(*chunk, max_length=max_length, padding=padding, truncation=True, return_tensors="np")
        inputs.append({key: value.astype(np.int64) for key, value in encoded.items()})
    targets = np.asarray(dataset[label_col]) if label_col else None
    return Batches(inputs=inputs, targets=targets, groups=groups)


# ---- post-processing: per-batch raw outputs -> predictions ----

def mean_pool(output: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray:
    if output.ndim != 3:
        return output.reshape(output.shape[0], -1)
    if attention_mask is None:
        return output.mean(axis=1)
    mask = attention_mask[..., None].astype(output.dtype)
    return (output * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)


def pooled(outputs: list[np.ndarray], batches: Batches, how: str = "mean") -> np.ndarray:
    if how == "cls":
        return np.concatenate([o[:, 0] if o.ndim == 3 else o for o in outputs]).astype(np.float32)
    return np.concatenate([mean_pool(o, f.get("attention_mask")) for o, f in zip(outputs, batches.inputs)]).astype(np.float32)


def _pair_cosine(outputs, batches):
    embeddings = pooled(outputs, batches)
    first, second = np.split(embeddings, batches.groups)[:2]
    return cosine_rows(first, second)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(axis=1) / np.clip(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12, None)


POST_PROCESSORS = {
    "mean_pooling": lambda outputs, batches: pooled(outputs, batches, "mean"),
    "cls_pooling": lambda outputs, batches: pooled(outputs, batches, "cls"),
    "argmax": lambda outputs, batches: np.concatenate([o.argmax(axis=-1) for o in outputs]),
    "pair_cosine": _pair_cosine,
    "identity": lambda outputs, batches: np.concatenate(outputs),
}


def post_process(data_config: dict, outputs: list[np.ndarray], batches: Batches) -> np.ndarray:
    kind = (data_config.get("post_process_data_config") or {"type": "identity"})["type"]
    if kind in POST_PROCESSORS:
        return POST_PROCESSORS[kind](outputs, batches)
    func = load_function(data_config.get("user_script"), kind, f"data_configs.{data_config['name']}.post_process_data_config")
    return np.asarray(func(outputs, batches))


def for_model(batches: Batches, model) -> Batches:
    """Only the inputs an ONNX model declares (a BERT export may have no token_type_ids)."""
    if model.type != "OnnxModel":
        return batches
    import onnx

    names = {i.name for i in onnx.load(str(model.onnx_path), load_external_data=False).graph.input}
    return Batches([{k: v for k, v in feed.items() if k in names} for feed in batches.inputs], batches.targets, batches.groups)
