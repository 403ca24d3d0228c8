"""Data configs: load with Hugging Face `datasets`, tokenize into model inputs, post-process outputs.

One registry each for pre-processing and post-processing; a recipe may also name a function in
its user_script for either step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RecipeError
from .user_script import load_function

HF_LOAD_SCHEMA = {
    "type": "object",
    "properties": {
        "data_name": {"type": "string", "description": "csv, json, parquet, a dataset folder, or a hub dataset "
                                                       "(glue, org/name; offline from the datasets cache)"},
        "data_files": {"type": ["string", "array"], "items": {"type": "string"}},
        "subset": {"type": ["string", "null"], "description": "a hub dataset's configuration, e.g. mrpc of glue"},
        "split": {"type": "string", "default": "train"},
        "filter": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]},
                   "description": "keep the rows whose columns have these values, e.g. {split: test}"},
    },
    "required": ["data_name"],
    "additionalProperties": False,
}
DUMMY_TYPES = ("int64", "int32", "float32", "float16", "bool")
DUMMY_LOAD_SCHEMA = {
    "type": "object",
    "properties": {
        "input_shapes": {"type": "array", "minItems": 1,
                         "items": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1}},
        "input_names": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                        "description": "default: the model's input names, in order"},
        "input_types": {"type": "array", "items": {"enum": list(DUMMY_TYPES)}, "minItems": 1,
                        "description": "one per input (default int64)"},
        "max_samples": {"type": "integer", "minimum": 1, "default": 32, "description": "how many feeds (batches)"},
    },
    "required": ["input_shapes"],
    "additionalProperties": False,
}

DATA_CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": ["HuggingfaceContainer", "DummyDataContainer"], "default": "HuggingfaceContainer",
                 "description": "HuggingfaceContainer: a dataset through `datasets`; DummyDataContainer: inputs of "
                                "given shapes and types (ones), no dataset (latency, calibration smoke runs)"},
        "user_script": {"type": "string"},
        "tokenizer": {"type": "string", "description": "tokenizer folder; default: the model's own folder"},
        "load_dataset_config": {"type": "object"},  # its shape depends on the container type: see allOf
        "pre_process_data_config": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "description": "tokenize, text_generation, or a function in "
                                                         "user_script (see the README: the data function contract)"},
                "input_cols": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "label_col": {"type": ["string", "null"]},
                "max_length": {"type": "integer", "minimum": 1},
                "padding": {"enum": ["max_length", "longest"]},
                "pair_mode": {"enum": ["joint", "separate"],
                              "description": "joint: one input per row; separate: each column encoded on its own"},
                "max_samples": {"type": ["integer", "null"], "minimum": 1,
                                "description": "tokenize and per-text text_generation: rows; a concatenated corpus: windows"},
                # text_generation (decoders: perplexity, generation prompts, greedy agreement)
                "text_field": {"type": "string", "description": "text_generation: the column holding the text (default text)"},
                "text_template": {"type": "string",
                                  "description": "text_generation: a format string over the columns, e.g. "
                                                 "'### Q: {prompt}\\n### A: {response}' (instead of text_field)"},
                "use_chat_template": {"type": "boolean",
                                      "description": "text_generation: each text as a user message through the "
                                                     "tokenizer's chat template, with the generation prompt"},
                "max_seq_len": {"type": "integer", "minimum": 2,
                                "description": "text_generation: window length (corpus) or most tokens per text; "
                                               "default min(1024, the model's context length)"},
                "add_special_tokens": {"type": "boolean",
                                       "description": "text_generation: the tokenizer's special tokens (BOS) "
                                                      "(default true; a chat template adds its own)"},
                "stride": {"type": "integer", "minimum": 1,
                           "description": "text_generation corpus: tokens between window starts (default max_seq_len: "
                                          "disjoint windows); a shorter stride overlaps and scores each token once"},
                "concatenate": {"type": "boolean",
                                "description": "text_generation: join the texts into one corpus (EOS between texts) "
                                               "cut into windows (default, for perplexity), or one input per text "
                                               "(the default with use_chat_template: prompts)"},
            },
            "required": ["type"],
        },
        "post_process_data_config": {
            "type": "object",
            "properties": {"type": {"type": "string", "description": "mean_pooling, cls_pooling, argmax, pair_cosine, "
                                    "identity, or a function; default: argmax for text-/token-classification models, "
                                    "identity otherwise"}},
            "required": ["type"],
        },
        "dataloader_config": {
            "type": "object",
            "properties": {"batch_size": {"type": "integer", "minimum": 1}},
            "additionalProperties": False,
        },
    },
    "required": ["name", "load_dataset_config"],
    "additionalProperties": False,
    "allOf": [
        {"if": {"properties": {"type": {"const": "DummyDataContainer"}}, "required": ["type"]},
         "then": {"properties": {"load_dataset_config": DUMMY_LOAD_SCHEMA}},
         "else": {"properties": {"load_dataset_config": HF_LOAD_SCHEMA}}},
    ],
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
    revision = _hub_dataset_revision(data_config)
    if revision:  # a hub dataset's cached commit: a new one is new data
        digest.update(revision.encode())
    return digest.hexdigest()


def _hub_dataset_revision(data_config: dict) -> str | None:
    """The commit (the builder's hash) a hub dataset loads from; None for files, folders and a dataset
    that cannot be found (loading it reports that)."""
    load = data_config.get("load_dataset_config") or {}
    name = load.get("data_name")
    if data_config.get("type") == "DummyDataContainer" or not name or Path(name).exists() or \
            name in ("csv", "json", "parquet", "text", "arrow"):  # files: hashed above, no datasets import
        return None
    import datasets
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    if name in _PACKAGED_DATASETS_MODULES:
        return None
    try:
        with _quiet_datasets():
            return str(datasets.load_dataset_builder(name, load.get("subset")).hash)
    except Exception:  # not cached / not reachable: load_batches says so in one line
        return None


@contextlib.contextmanager
def _quiet_datasets():
    """datasets' warnings off meanwhile: not "using the latest cached version ... (offline mode)" on every load."""
    import datasets

    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)


def _data_files(data_config: dict) -> list[str]:
    files = data_config["load_dataset_config"].get("data_files") or []
    return [files] if isinstance(files, str) else list(files)


# What a model of each task is scored on without a post_process_data_config: a classifier's class
# (so accuracy needs no argmax line); every other task's raw output.
TASK_POST_PROCESSING = {"text-classification": "argmax", "token-classification": "argmax"}


def with_task_defaults(data_config: dict, task: str | None) -> dict:
    """The data config with its defaults written in (so the normalized recipe shows them): tokenize
    as pre-processing, and the task's post-processing."""
    config = dict(data_config)
    if config.get("type") == "DummyDataContainer":
        return config
    config["pre_process_data_config"] = {"type": "tokenize", **(config.get("pre_process_data_config") or {})}
    default_post = TASK_POST_PROCESSING.get(task or "")
    if default_post and "post_process_data_config" not in config and config["pre_process_data_config"]["type"] == "tokenize":
        config["post_process_data_config"] = {"type": default_post}
    return config


def load_batches(data_config: dict, model_folder: Path) -> Batches:
    if data_config.get("type") == "DummyDataContainer":
        return dummy_batches(data_config, Path(model_folder))
    import datasets

    datasets.disable_progress_bars()
    load = data_config["load_dataset_config"]
    name = data_config["name"]
    try:
        with _quiet_datasets():
            dataset = datasets.load_dataset(load["data_name"], load.get("subset"), data_files=load.get("data_files"),
                                            split=load.get("split", "train"))
    except Exception as exc:
        from .hub import dataset_load_error

        raise (dataset_load_error(name, load["data_name"], load.get("subset"), exc) or
               RecipeError(f"data config '{name}': cannot load dataset: {str(exc).splitlines()[0]}",
                           "check load_dataset_config (data_name, subset, data_files, split)")) from None
    wanted = load.get("filter") or {}
    missing = [column for column in wanted if column not in dataset.column_names]
    if missing:
        raise RecipeError(f"data config '{name}': load_dataset_config.filter names {missing}, not columns of the dataset "
                          f"(its columns: {dataset.column_names})", "filter on columns the dataset has")
    if wanted:
        dataset = dataset.filter(lambda row: all(row[column] == value for column, value in wanted.items()))
    pre = {"type": "tokenize", **(data_config.get("pre_process_data_config") or {})}
    if pre.get("max_samples") and pre["type"] != "text_generation":  # it counts prompts or windows itself
        dataset = dataset.select(range(min(pre["max_samples"], len(dataset))))
    batch_size = data_config.get("dataloader_config", {}).get("batch_size", 1)
    kind = pre.pop("type")
    if kind == "tokenize":
        from transformers import AutoTokenizer

        if not pre.get("input_cols"):
            raise RecipeError(f"data config '{name}': pre_process_data_config.input_cols is not set: tokenize needs the "
                              f"text columns", f"set input_cols to some of the dataset's columns {dataset.column_names}")
        tokenizer = AutoTokenizer.from_pretrained(data_config.get("tokenizer") or model_folder)
        batches = _tokenize(dataset, tokenizer, batch_size, name, **pre)
    elif kind == "text_generation":
        batches = _text_generation(dataset, data_config, Path(model_folder), **pre)
    else:
        batches = _user_pre_process(data_config, kind, dataset, Path(model_folder), batch_size, pre)
    return batches


def _user_pre_process(data_config: dict, kind: str, dataset, model_folder: Path, batch_size: int, options: dict) -> Batches:
    """A pre-process function of the user_script. The contract (README "Data functions"):

        def my_pre_process(dataset, *, model_folder, batch_size, tokenizer, **options) -> Batches

    dataset: the loaded `datasets.Dataset` (split, filter and max_samples applied); model_folder:
    the model's folder (a Path); batch_size: dataloader_config.batch_size; tokenizer: the data
    config's tokenizer (else the model's own), loaded only when the function takes it; options:
    the other keys of pre_process_data_config. It returns Batches(inputs=[{input name: numpy
    array}, one dict per batch], targets=numpy array of labels or None), or a tuple (inputs,
    targets)."""
    import inspect

    name = data_config["name"]
    func = load_function(data_config.get("user_script"), kind, f"data_configs.{name}.pre_process_data_config")
    parameters = inspect.signature(func).parameters
    kwargs = dict(options, model_folder=model_folder, batch_size=batch_size)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "tokenizer" in parameters or takes_any:
        from transformers import AutoTokenizer

        kwargs["tokenizer"] = AutoTokenizer.from_pretrained(data_config.get("tokenizer") or model_folder)
    result = func(dataset, **kwargs)
    if isinstance(result, tuple) and len(result) == 2:
        result = Batches(inputs=list(result[0]), targets=None if result[1] is None else np.asarray(result[1]))
    if not isinstance(result, Batches) or not all(isinstance(feed, dict) for feed in result.inputs):
        raise RecipeError(f"data config '{name}': pre-process function '{kind}' returned {type(result).__name__}",
                          "return olive_systems.data.Batches(inputs=[{name: array}, ...], targets=labels or None), "
                          "or a tuple (inputs, targets)")
    result.inputs = [{key: np.asarray(value) for key, value in feed.items()} for feed in result.inputs]
    return result


_DUMMY_NUMPY = {"int64": np.int64, "int32": np.int32, "float32": np.float32, "float16": np.float16, "bool": np.bool_}


def dummy_batches(data_config: dict, model_folder: Path) -> Batches:
    """DummyDataContainer: max_samples feeds of ones in the given shapes and types, no dataset."""
    load, name = data_config["load_dataset_config"], data_config["name"]
    shapes = load["input_shapes"]
    names = load.get("input_names") or _model_input_names(model_folder)[:len(shapes)]
    types = load.get("input_types") or ["int64"] * len(shapes)
    if not (len(names) == len(shapes) == len(types)):
        raise RecipeError(f"data config '{name}': load_dataset_config has {len(shapes)} input_shapes, {len(names)} "
                          f"input_names ({names}) and {len(types)} input_types",
                          "give one name and one type per shape (names default to the model's inputs, in order)")
    feed = {n: np.ones(shape, dtype=_DUMMY_NUMPY[t]) for n, shape, t in zip(names, shapes, types)}
    return Batches(inputs=[dict(feed) for _ in range(load.get("max_samples", 32))], targets=None)


def _model_input_names(model_folder: Path) -> list[str]:
    """An ONNX model's declared inputs, else its tokenizer's input names."""
    if (model_folder / "model.onnx").is_file():
        import onnx

        graph = onnx.load(str(model_folder / "model.onnx"), load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        return [i.name for i in graph.input if i.name not in initializers]
    from .models import model_input_names

    return model_input_names(model_folder)


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


# ---- text_generation: token ids for decoders ----

# Per-window input (beside input_ids) of a concatenated corpus: the first position whose token is
# scored. 1 for a window that starts the corpus or follows a disjoint one; later with an overlapping
# stride, so that no token is scored twice.
SCORED_FROM = "scored_from"


def _text_generation(dataset, data_config: dict, model_folder: Path, text_field: str | None = None,
                     text_template: str | None = None, use_chat_template: bool = False, max_seq_len: int | None = None,
                     add_special_tokens: bool = True, max_samples: int | None = None, stride: int | None = None,
                     concatenate: bool | None = None) -> Batches:
    """Texts -> Batches of {"input_ids": int64 [1, n]} for decoders (batch size 1 always).

    Each row's text is its text_field column (default "text") or text_template formatted over its
    columns; empty texts (blank lines of a text file) are skipped.

    * concatenate (the default without use_chat_template; for perplexity): the texts are joined in
      one token stream, [BOS when add_special_tokens and the tokenizer has one] text1 EOS text2 EOS
      ... textN (the tokenizer's EOS, else its SEP, between texts), and cut into windows of
      max_seq_len tokens that start every `stride` tokens (default max_seq_len: disjoint windows).
      Each window also carries scored_from [1, 1]: the first position whose token is scored. A
      window's first token has no context in it: with disjoint windows it is not scored; with
      overlapping ones (stride < max_seq_len) a window scores only the tokens after the previous
      window's end, so every token but the corpus's first is scored once. max_samples caps the
      windows.
    * one input per text (the default with use_chat_template; prompts): the text tokenized alone
      (add_special_tokens), or as a user message through the tokenizer's chat template with the
      generation prompt (the template writes its own special tokens). A text over max_seq_len tokens
      keeps its first max_seq_len, a chat prompt its last (the generation prompt). max_samples caps
      the texts.
    """
    import string

    from transformers import AutoTokenizer

    name = data_config["name"]
    columns = list(dataset.column_names)
    if text_template is not None:
        needed = [field for _, field, _, _ in string.Formatter().parse(text_template) if field is not None]
        bad = [field for field in needed if not field or not field.isidentifier()]
        if bad or not needed:
            raise RecipeError(f"data config '{name}': text_template must name columns as {{column}} (got {text_template!r})",
                              f"use columns of the dataset: {columns}")
        where, missing = "text_template", [field for field in needed if field not in columns]
    else:
        text_field = text_field or "text"
        where, missing = "text_field", [text_field] if text_field not in columns else []
    if missing:
        raise RecipeError(f"data config '{name}': {where} names column '{missing[0]}', which is not in the dataset "
                          f"(its columns: {columns})", f"set pre_process_data_config.{where} to use one of {columns}")
    tokenizer = AutoTokenizer.from_pretrained(data_config.get("tokenizer") or model_folder)
    if use_chat_template and not getattr(tokenizer, "chat_template", None):
        raise RecipeError(f"data config '{name}': use_chat_template is set but the tokenizer has no chat template",
                          "use a tokenizer with a chat_template (tokenizer_config.json / chat_template.jinja), "
                          "or drop use_chat_template")
    context = _context_length(model_folder)
    if max_seq_len is None:
        max_seq_len = min(1024, context or 1024)
    elif context and max_seq_len > context:
        raise RecipeError(f"data config '{name}': max_seq_len {max_seq_len} is over the model's context length of {context}",
                          f"set pre_process_data_config.max_seq_len to {context} or less")
    concatenate = (not use_chat_template) if concatenate is None else concatenate
    stride = stride or max_seq_len

    def encode(text: str) -> list[int]:
        if use_chat_template:
            return _chat_ids(tokenizer, text)
        return tokenizer(text, add_special_tokens=add_special_tokens and not concatenate)["input_ids"]

    # Rows are read, and encoded, only until the windows or prompts max_samples asks for are there.
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    bos = tokenizer.bos_token_id if add_special_tokens and concatenate and not use_chat_template else None
    stream: list[int] = [bos] if bos is not None else []
    wanted = ((max_samples - 1) * stride + max_seq_len if concatenate else max_samples) if max_samples else None
    prompts: list[list[int]] = []
    texts = 0
    for row in dataset:
        text = text_template.format(**row) if text_template is not None else row[text_field]
        text = "" if text is None else str(text)
        if not text.strip():
            continue
        ids = encode(text)
        if concatenate:
            if texts and separator is not None:
                stream.append(separator)
            stream.extend(ids)
        else:  # a chat prompt keeps its end (the generation prompt), any other text its start
            prompts.append(ids[-max_seq_len:] if use_chat_template else ids[:max_seq_len])
        texts += 1
        if wanted and (len(stream) if concatenate else len(prompts)) >= wanted:
            break
    if not texts:
        raise RecipeError(f"data config '{name}': every text is empty", "check load_dataset_config and text_field")
    if not concatenate:
        return Batches(inputs=[{"input_ids": np.asarray(ids, dtype=np.int64).reshape(1, -1)} for ids in prompts],
                       targets=None)
    windows = _windows(np.asarray(stream, dtype=np.int64), max_seq_len, stride)[:max_samples or None]
    if not windows:
        raise RecipeError(f"data config '{name}': the corpus is shorter than 2 tokens", "give it more text")
    return Batches(inputs=[{"input_ids": ids.reshape(1, -1), SCORED_FROM: np.array([[first]], dtype=np.int64)}
                           for ids, first in windows], targets=None)


def _chat_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding in some transformers versions
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _windows(stream: np.ndarray, max_seq_len: int, stride: int) -> list[tuple[np.ndarray, int]]:
    """(ids, scored_from) windows over a token stream; no token is scored twice."""
    windows, scored_until = [], 1  # stream[0] has no context: never scored
    for begin in range(0, len(stream), stride):
        end = min(begin + max_seq_len, len(stream))
        if end - begin >= 2 and end > scored_until:
            windows.append((stream[begin:end], max(scored_until - begin, 1)))
            scored_until = end
        if end == len(stream):
            break
    return windows


def _context_length(model_folder: Path) -> int | None:
    try:
        from .llm.runners import decoder_spec

        return decoder_spec(model_folder).context_length
    except Exception:  # no config beside the data's tokenizer: the default window
        return None


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
    "identity": lambda outputs, batches: _identity(outputs),
}


def _identity(outputs: list[np.ndarray]) -> np.ndarray:
    shapes = sorted({tuple(o.shape[1:]) for o in outputs})
    if len(shapes) > 1:  # per-token outputs of batches padded to different lengths: no one array
        raise RecipeError(f"the model's outputs differ in shape from batch to batch ({[list(s) for s in shapes[:3]]}), "
                          "so they cannot be scored as they are",
                          "set post_process_data_config.type (argmax for a classifier, mean_pooling or cls_pooling for "
                          "embeddings), or padding: max_length in pre_process_data_config")
    return np.concatenate(outputs)


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
