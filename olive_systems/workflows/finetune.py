"""finetune: train a LoRA (or QLoRA) adapter for a Hugging Face decoder with the LoRA pass; with
evaluation data, the input model and the tuned one are scored for perplexity on it."""

from __future__ import annotations

import re
from typing import Literal

from .common import (EVENT_SINK, LOG, LogLevel, WorkflowOutput, data_config, engine_section, input_model, is_generative,
                     log_event, refuse, run_workflow)

# A training progress line of the LoRA pass, as the engine forwards it: "<pass>: step 3/40 loss ..."
_PROGRESS = re.compile(r"(^|: )step \d+/\d+ ")


def finetune(
    model_name_or_path: str,
    *,
    task: str = "text-generation-with-past",
    trust_remote_code: bool = False,
    output_path: str = "finetuned-adapter",
    method: Literal["lora", "qlora"] = "lora",
    lora_r: int = 64,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: str | list[str] | None = None,
    torch_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
    data_name: str | None = None,
    train_subset: str | None = None,
    train_split: str | None = None,
    eval_subset: str | None = None,
    eval_split: str | None = None,
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
    **training_kwargs,
) -> WorkflowOutput:
    """Fine-tune a Hugging Face decoder with a LoRA or QLoRA adapter.

    One pass, LoRA (QLoRA for method qlora), trains a peft adapter with the transformers Trainer on
    the training split; the output folder holds the input model's files unchanged and the adapter in
    adapter/ (adapter_config.json, adapter_model.safetensors). Loading the candidate applies the
    adapter. The texts are pre-processed as for perplexity: text_field or text_template, joined and
    cut into windows of max_seq_len tokens (with use_chat_template, one text per sample). With
    eval_split or eval_subset, the input model and the tuned model are scored for perplexity on that
    split. Training shows its progress (step, loss, time left) while it runs; a second call with the
    same model, data, settings and package versions comes from the cache without training again.

    torch_dtype is honoured as given: bfloat16 trains on CPUs too (more slowly than float32 on most
    of them); the adapter itself stays float32. QLoRA (4-bit NF4 base) needs bitsandbytes' 4-bit
    kernels, in practice a CUDA GPU, and is refused before any work where they cannot run.

    Args:
        model_name_or_path: Hugging Face model folder or Hub name, or a .gguf file.
        task: Task the model is loaded for: text-generation-with-past or text-generation.
        trust_remote_code: Run the model repository's own code when loading it.
        output_path: Output folder of the run.
        method: lora, or qlora (LoRA over the model loaded in 4 bits; needs bitsandbytes with a CUDA GPU).
        lora_r: Rank of the LoRA matrices.
        lora_alpha: LoRA scaling factor (the update is scaled by lora_alpha / lora_r).
        lora_dropout: Dropout on the LoRA inputs.
        target_modules: Modules to adapt, comma-separated (e.g. q_proj,v_proj, or all-linear); default: peft's choice for the model type.
        torch_dtype: Dtype the model is trained in.
        data_name: Training dataset: a dataset name or folder, or csv/json/parquet/text with data_files.
        train_subset: Subset (configuration) of the dataset to train on.
        train_split: Split to train on (default train; slices such as train[:85%] work).
        eval_subset: Subset to evaluate on.
        eval_split: Split to evaluate perplexity on (e.g. test, or train[85%:]); none: no evaluation.
        data_files: Data files, comma-separated.
        text_field: Column holding the text (default text).
        text_template: Template building the text from columns, e.g. '### Question: {question} ### Answer: {answer}'.
        use_chat_template: Format each text as a user message with the tokenizer's chat template.
        max_seq_len: Tokens per training sample (default: min(1024, the model's context length)).
        add_special_tokens: Add the tokenizer's special tokens (BOS) to the texts.
        max_samples: Use at most this many samples (windows) of each split.
        batch_size: Samples per training (and evaluation) step: per_device_train_batch_size.
        input_cols: Encoder tasks' text columns. Not used by decoders: refused (give text_field).
        account_name: Azure storage account of the shared cache.
        container_name: Azure Blob container of the shared cache.
        log_level: Logging level 0-4 (DEBUG, INFO, WARNING, ERROR, CRITICAL).
        save_config_file: Also write the recipe this call runs as <output_path>/finetune_config.yaml.
        cache_dir: Cache folder of the run.
        **training_kwargs: Further transformers.TrainingArguments by name (learning_rate, max_steps, num_train_epochs, gradient_accumulation_steps, seed, ...).

    Returns:
        The run's WorkflowOutput: one candidate, the tuned model with its adapter.
    """
    args = dict(locals())
    args.update(training_kwargs=dict(args.pop("training_kwargs")))
    token = EVENT_SINK.set(training_progress(EVENT_SINK.get()))
    try:
        return run_workflow("finetune", build, args)
    finally:
        EVENT_SINK.reset(token)


def build(args: dict) -> dict:
    from ..errors import PassError, RecipeError
    from ..passes.lora import check_qlora, check_training_args

    task = args["task"]
    if not is_generative(task):
        refuse("task", task, "LoRA fine-tuning here trains decoder language models",
               "use task text-generation-with-past (or text-generation)")
    if args["method"] == "qlora":
        try:
            check_qlora()
        except PassError as exc:
            refuse("method", "qlora", exc.message, exc.fix)
    if isinstance(args["lora_r"], bool) or not isinstance(args["lora_r"], int) or args["lora_r"] < 1:
        refuse("lora_r", args["lora_r"], "is not a positive integer", "e.g. 8, 16 or 64")
    if not args["lora_alpha"] or args["lora_alpha"] <= 0:
        refuse("lora_alpha", args["lora_alpha"], "is not a positive number", "e.g. 16 or 32")
    if not 0 <= args["lora_dropout"] < 1:
        refuse("lora_dropout", args["lora_dropout"], "is not in [0, 1)", "e.g. 0.05")
    training = dict(args.get("training_kwargs") or {})
    seed = training.pop("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        refuse("seed", seed, "is not a non-negative integer", "e.g. seed=0")
    if args["batch_size"] is not None:
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if key in training and training[key] != args["batch_size"]:
                refuse(key, training[key], f"and batch_size={args['batch_size']} both set the batch size", "give one")
            training[key] = args["batch_size"]
    try:
        check_training_args(training, "training argument")
    except PassError as exc:
        raise RecipeError(exc.message, exc.fix) from None
    if not args["data_name"] and not args["data_files"]:
        refuse("data_name", None, "finetune trains on a dataset, and none is given",
               "give data_name (a dataset name or folder), or data_files (csv/json/jsonl/parquet/txt)")
    train = data_config("train", _split_arguments(args, "train"), task)
    evaluation = None
    if args["eval_split"] or args["eval_subset"]:
        evaluation = data_config("eval", _split_arguments(args, "eval"), task)
    config = {"method": args["method"], "lora_r": args["lora_r"], "lora_alpha": args["lora_alpha"],
              "lora_dropout": args["lora_dropout"], "target_modules": _targets(args["target_modules"]),
              "torch_dtype": args["torch_dtype"], "train_data_config": "train", "training_args": training, "seed": seed}
    if evaluation:
        config["eval_data_config"] = "eval"
    engine = engine_section(args)
    model = input_model(args["model_name_or_path"], task, args["trust_remote_code"])  # may download: refusals first
    if model["type"] != "HfModel":
        refuse("model_name_or_path", args["model_name_or_path"], "is an ONNX model; LoRA trains the PyTorch model",
               "give the Hugging Face model (folder, Hub name or .gguf file)")
    recipe = {
        "description": f"olive-systems finetune ({args['method']}, r={args['lora_r']}): {args['model_name_or_path']}",
        "input_model": model,
        "data_configs": [train] + ([evaluation] if evaluation else []),
        "passes": {"lora": {"type": "QLoRA" if args["method"] == "qlora" else "LoRA", "config": config}},
        "pass_flows": [["lora"]],
        "engine": engine,
    }
    if evaluation:
        recipe["evaluators"] = {"perplexity": {"metrics": [
            {"name": "perplexity", "type": "perplexity", "data_config": "eval",
             "sub_types": [{"name": "perplexity", "priority": 1}, {"name": "loss"}]}]}}
        engine["evaluator"] = "perplexity"
    return recipe


def _split_arguments(args: dict, which: str) -> dict:
    """The data arguments of one split: train_subset / train_split as subset / split (batch_size is
    the Trainer's, not the data config's: text_generation gives one sample per input)."""
    split = args[f"{which}_split"] or ("train" if which == "train" else None)
    return {**args, "subset": args[f"{which}_subset"], "split": split, "batch_size": None}


def _targets(value) -> list[str] | None:
    if value is None:
        return None
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    names = [name for name in names if name]
    if not names:
        refuse("target_modules", value, "names no module", "give module names, e.g. q_proj,v_proj, or all-linear")
    return names


def training_progress(sink):
    """Events as the workflow's sink takes them, training progress made live: on the command line the
    pass's "step N/M loss ... left" lines become the status line; through the API they are logged at
    INFO (log_level 1)."""
    forward = sink or log_event

    def on_event(event: dict) -> None:
        message = event.get("message") or ""
        if event.get("kind") == "log" and _PROGRESS.search(message):
            if sink is None:
                LOG.info("%s", message)
                return
            sink({"kind": "start", "name": message, "step": "training"})
        forward(event)

    return on_event
