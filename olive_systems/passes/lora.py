"""LoRA and QLoRA: fine-tune a Hugging Face decoder with a peft LoRA adapter on the transformers Trainer.

The training data is a data config pre-processed by `text_generation` (windows of a concatenated
corpus, or one text per input): each input's input_ids become one training sample, labels equal to
the ids (-100 on padding, and before scored_from where windows overlap, so no token is trained on
twice). Batches are padded here; the model's own pad token is used when it has one.

Everything that can be refused is refused before the model is trained: a task that is not
generative, an input that already carries an adapter, QLoRA where bitsandbytes cannot run, a
training argument transformers.TrainingArguments does not have (or one the pass owns), target
modules the model does not have (the error names the Linear modules it does have).

The output is a Hugging Face folder: the input model's files, unchanged (hard links where the file
system allows), plus the adapter in `adapter/` (peft's adapter_config.json and
adapter_model.safetensors). Its attributes say where the adapter is (adapter_path), so loading the
model (models.load_hf_model) applies it, unmerged.
"""

from __future__ import annotations

import difflib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import PassError
from ..models import ModelRef, copy_tree, folder_sha256, is_generative
from .base import Pass, PassContext

ADAPTER_DIR = "adapter"
# TrainingArguments the pass decides itself, and why.
RESERVED_TRAINING_ARGS = {
    "output_dir": "the pass writes its output folder itself (the model with the adapter in adapter/)",
    "seed": "the pass's own seed setting seeds training",
}
# TrainingArguments defaults of the pass; training_args overrides each of them.
TRAINING_DEFAULTS = {
    "report_to": "none",
    "disable_tqdm": True,  # progress goes through the pass log (one line per logging step)
    "save_strategy": "no",  # the adapter is saved once, at the end
    "remove_unused_columns": False,
    "label_names": ["labels"],
    "dataloader_pin_memory": False,
}
QLORA_FIX = "use method lora (LoRA trains the full-precision model, on CPU too)"


class LoRA(Pass):
    description = ("Fine-tune a decoder with a LoRA adapter (peft) on the transformers Trainer; the output is the "
                   "input model unchanged with the adapter in adapter/.")
    input_types = ("HfModel",)
    depends_on = ("torch", "transformers", "peft")
    accelerator_dependent = False
    required_config = ("train_data_config",)
    # Config keys naming data_configs entries: the engine hashes and ships each of them with the job.
    data_config_keys = ("train_data_config", "eval_data_config")
    config_schema = {
        "method": {"enum": ["lora", "qlora"], "default": "lora",
                   "description": "qlora: LoRA over the model loaded in 4 bits (bitsandbytes NF4; needs its kernels)"},
        "lora_r": {"type": "integer", "minimum": 1, "default": 16, "description": "rank of the LoRA matrices"},
        "lora_alpha": {"type": "number", "exclusiveMinimum": 0, "default": 32,
                       "description": "LoRA scaling: the update is multiplied by lora_alpha / lora_r"},
        "lora_dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.05},
        "target_modules": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1, "default": None,
                           "description": "names (or name endings) of the Linear modules to adapt, or ['all-linear']; "
                                          "null: peft's default for the model type"},
        "torch_dtype": {"enum": ["float32", "float16", "bfloat16"], "default": "float32",
                        "description": "dtype the model is loaded and trained in (the adapter stays float32)"},
        "train_data_config": {"type": "string",
                              "description": "name of a data_configs entry (pre-process type text_generation)"},
        "eval_data_config": {"type": ["string", "null"], "default": None,
                             "description": "name of a data_configs entry scored after training (eval_loss)"},
        "training_args": {"type": "object", "default": {},
                          "description": "transformers.TrainingArguments by name, e.g. {learning_rate: 2e-4, "
                                         "max_steps: 100, per_device_train_batch_size: 4}"},
        "seed": {"type": "integer", "minimum": 0, "default": 0, "description": "seeds the adapter's initialisation, "
                                                                              "dropout and the data order"},
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        # ---- refusals, before any work ----
        if not is_generative(model.task):
            raise PassError(f"{type(self).__name__} fine-tunes decoders; the model's task is '{model.task}'",
                            "use task text-generation-with-past (or text-generation)")
        if (model.attributes or {}).get("adapter_path"):
            raise PassError("the input model already carries a LoRA adapter",
                            "merge it first (peft: merge_and_unload().save_pretrained(DIR)) and start from DIR")
        if config["method"] == "qlora":
            check_qlora()
        arguments = check_training_args(config["training_args"])
        import torch

        torch_dtype = getattr(torch, config["torch_dtype"])
        train = _samples(ctx, config["train_data_config"], model)
        evaluation = _samples(ctx, config["eval_data_config"], model) if config["eval_data_config"] else None
        with tempfile.TemporaryDirectory(prefix="olive-lora-") as scratch:
            args = _training_arguments(arguments, config["seed"], len(train), scratch)
            hf_model = _load(model, config["method"], torch_dtype)
            targets = check_target_modules(hf_model, config["target_modules"])
            peft_model = _with_adapter(hf_model, config, targets, args)
            trainer, progress = _trainer(peft_model, args, train, evaluation, _pad_id(model), ctx)
            ctx.log(f"training {len(train)} samples of up to {max(len(s['input_ids']) for s in train)} tokens: "
                    f"{progress.total} steps, LoRA r={config['lora_r']} alpha={config['lora_alpha']} on "
                    f"{', '.join(_target_names(peft_model))} ({config['torch_dtype']}, {config['method']})")
            try:
                result = trainer.train()
            except Exception as exc:
                raise PassError(f"training failed: {type(exc).__name__}: {_first_line(exc)}",
                                "check training_args and the data (see the log tail)") from exc
            summary = {"method": config["method"], "r": config["lora_r"], "alpha": config["lora_alpha"],
                       "dropout": config["lora_dropout"], "targets": _target_names(peft_model),
                       "torch_dtype": config["torch_dtype"], "steps": int(trainer.state.global_step),
                       "train_loss": round(float(result.training_loss), 6), "loss_history": _thinned(progress.losses),
                       "train_samples_per_second": result.metrics.get("train_samples_per_second"),
                       "train_runtime_s": result.metrics.get("train_runtime")}
            if evaluation is not None:
                eval_loss = float(trainer.evaluate()["eval_loss"])
                summary.update(eval_loss=round(eval_loss, 6), eval_perplexity=round(math.exp(min(eval_loss, 50.0)), 6))
                ctx.log(f"eval loss {eval_loss:.4f} (perplexity {summary['eval_perplexity']:.4g})")
        # ---- the output: written only once training has succeeded ----
        try:
            _write(Path(model.path), out_dir, peft_model)
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        return ModelRef(type="HfModel", path=str(out_dir), hash=folder_sha256(out_dir), task=model.task,
                        attributes={**(model.attributes or {}), "adapter_path": ADAPTER_DIR, "lora": summary})


class QLoRA(LoRA):
    description = ("LoRA over the model loaded in 4 bits (bitsandbytes NF4, double quantization, compute in "
                   "torch_dtype); needs bitsandbytes' 4-bit kernels (a CUDA GPU). Olive's name for LoRA with "
                   "method qlora.")
    config_schema = {**LoRA.config_schema, "method": {**LoRA.config_schema["method"], "enum": ["qlora"],
                                                      "default": "qlora"}}


# ---- checks ----

def qlora_unavailable() -> str | None:
    """Why bitsandbytes' 4-bit layers cannot run here (None: they can)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        gpu = "" if torch.cuda.is_available() else " and torch sees no CUDA GPU"
        return f"bitsandbytes is not installed{gpu}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:  # a 4-bit layer, quantized and run once: what QLoRA's forward does in every layer
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(device)
        layer(torch.ones(1, 64, device=device))
    except Exception as exc:  # an old build, no kernels for this device: the reason is in the message
        return f"its 4-bit layers do not run on {device}: {type(exc).__name__}: {_first_line(exc)}"
    return None


def check_qlora() -> None:
    """PassError when bitsandbytes' 4-bit layers cannot run here (the reason, and LoRA as the fix)."""
    reason = qlora_unavailable()
    if reason:
        raise PassError(f"QLoRA needs bitsandbytes 4-bit kernels: a CUDA GPU, or a bitsandbytes build with CPU "
                        f"support ({reason})", QLORA_FIX)


def check_training_args(training_args: dict | None, label: str = "training_args") -> dict:
    """training_args as given, after checking every name against transformers.TrainingArguments."""
    import dataclasses

    from transformers import TrainingArguments

    given = dict(training_args or {})
    for name in given:
        if name in RESERVED_TRAINING_ARGS:
            raise PassError(f"{label} '{name}': {RESERVED_TRAINING_ARGS[name]}", f"drop {name}")
    fields = sorted(f.name for f in dataclasses.fields(TrainingArguments) if f.init)
    unknown = [name for name in given if name not in fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        raise PassError(f"{label} '{unknown[0]}' is not an argument of transformers.TrainingArguments"
                        + (f"; did you mean '{close[0]}'?" if close else ""),
                        "use TrainingArguments' own names (learning_rate, max_steps, num_train_epochs, "
                        "per_device_train_batch_size, gradient_accumulation_steps, ...)")
    return given


def linear_module_names(model) -> list[str]:
    """Full names of the modules LoRA can adapt (Linear, and GPT-2's Conv1D)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return [name for name, module in model.named_modules() if name and isinstance(module, (nn.Linear, Conv1D))]


def _leaf_names(names: list[str]) -> list[str]:
    """The last parts of module names, sorted and unique: what target_modules names."""
    return sorted({name.rsplit(".", 1)[-1] for name in names})


def check_target_modules(model, wanted: list[str] | None):
    """The target_modules peft is given: the config's, each found in the model, or peft's default for
    the model type. A name matches a module whose full name is it or ends with '.' + it."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    names = linear_module_names(model)
    leaves = _leaf_names(names)
    model_type = getattr(model.config, "model_type", None)
    if wanted is None:
        default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if not default:
            raise PassError(f"peft has no default LoRA target modules for model type '{model_type}'",
                            f"set target_modules to some of its Linear modules: {', '.join(leaves)}")
        return sorted(default)
    if list(wanted) == ["all-linear"]:
        return "all-linear"
    missing = [target for target in wanted
               if not any(name == target or name.endswith("." + target) for name in names)]
    if missing:
        them = "are not Linear modules" if len(missing) > 1 else "is not a Linear module"
        raise PassError(f"target_modules {', '.join(repr(m) for m in missing)} {them} of this model "
                        f"(its Linear modules: {', '.join(leaves)})",
                        f"use some of {', '.join(leaves)}, or all-linear")
    return list(wanted)


# ---- data ----

def _samples(ctx: PassContext, name: str, model: ModelRef) -> list[dict]:
    """One training sample per pre-processed input: input_ids, and labels with -100 where not trained."""
    import numpy as np

    from ..data import SCORED_FROM

    try:
        batches = ctx.load_data(name, model)
    except KeyError:
        raise PassError(f"data config '{name}' did not reach the pass",
                        "the engine must ship every data config the pass names (LoRA.data_config_keys)") from None
    samples = []
    for feed in batches.inputs:
        if "input_ids" not in feed:
            raise PassError(f"data config '{name}' gives no input_ids (it has {sorted(feed)})",
                            "use pre_process_data_config type text_generation")
        ids = np.asarray(feed["input_ids"], dtype=np.int64).reshape(-1)
        if len(ids) < 2:
            continue  # nothing to predict
        labels = ids.copy()
        first = int(np.asarray(feed[SCORED_FROM]).reshape(-1)[0]) if SCORED_FROM in feed else 1
        labels[:first] = -100  # the previous window trained on these (position 0 is never predicted anyway)
        samples.append({"input_ids": ids, "labels": labels})
    if not samples:
        raise PassError(f"data config '{name}' has no sample of two tokens or more", "give it more text")
    return samples


def _pad_id(model: ModelRef) -> int:
    """The tokenizer's pad token, else its EOS, else 0: padded positions are masked out either way."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


class _Collator:
    """Right-pads a batch to its longest sample: attention_mask 0 and labels -100 on the padding."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        import torch

        longest = max(len(sample["input_ids"]) for sample in samples)
        ids = torch.full((len(samples), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            ids[row, :n] = torch.from_numpy(sample["input_ids"])
            labels[row, :n] = torch.from_numpy(sample["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---- model and training ----

def _training_arguments(given: dict, seed: int, samples: int, output_dir: str):
    from transformers import TrainingArguments

    values = {**TRAINING_DEFAULTS, "seed": seed, "data_seed": seed, **given}
    if "logging_steps" not in given:  # about 20 progress lines per run, at least one per step
        values["logging_steps"] = max(1, _total_steps(values, samples) // 20)
    try:
        return TrainingArguments(output_dir=output_dir, **values)
    except (ValueError, TypeError) as exc:
        raise PassError(f"training_args: {_first_line(exc)}",
                        "fix training_args (transformers.TrainingArguments)") from exc


def _total_steps(values: dict, samples: int) -> int:
    """Optimizer steps the arguments ask for (before the Trainer exists: for the logging interval)."""
    if values.get("max_steps", -1) > 0:
        return int(values["max_steps"])
    batches = math.ceil(samples / values.get("per_device_train_batch_size", 8))
    per_epoch = max(1, batches // values.get("gradient_accumulation_steps", 1))
    return max(1, math.ceil(per_epoch * values.get("num_train_epochs", 3.0)))


def _load(model: ModelRef, method: str, torch_dtype):
    from ..models import load_hf_model

    try:
        if method == "qlora":
            import torch
            from transformers import AutoModelForCausalLM, BitsAndBytesConfig
            from peft import prepare_model_for_kbit_training

            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch_dtype)
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
            hf_model = AutoModelForCausalLM.from_pretrained(model.path, quantization_config=quantization,
                                                            dtype=torch_dtype, device_map={"": device})
            return prepare_model_for_kbit_training(hf_model, use_gradient_checkpointing=False)
        return load_hf_model(model, dtype=torch_dtype)
    except PassError:
        raise
    except Exception as exc:
        raise PassError(f"loading the model for {method} failed: {type(exc).__name__}: {_first_line(exc)}",
                        QLORA_FIX if method == "qlora" else "check the input model folder") from exc


def _with_adapter(hf_model, config: dict, targets, args):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config["seed"])  # the adapter's initialisation
    if args.gradient_checkpointing:  # the frozen embeddings' outputs must carry gradients for checkpointing
        hf_model.enable_input_require_grads()
    lora = LoraConfig(r=config["lora_r"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(hf_model, lora)
    except (ValueError, TypeError) as exc:
        leaves = _leaf_names(linear_module_names(hf_model))
        raise PassError(f"peft could not add the adapter: {_first_line(exc)}",
                        f"set target_modules to some of: {', '.join(leaves)}") from exc


def _target_names(peft_model) -> list[str]:
    targets = peft_model.peft_config["default"].target_modules
    return sorted(targets) if isinstance(targets, (set, list, tuple)) else [str(targets)]


def _trainer(peft_model, args, train: list[dict], evaluation: list[dict] | None, pad_id: int, ctx: PassContext):
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    progress = _progress_callback(ctx.log)
    trainer = Trainer(model=peft_model, args=args, train_dataset=_Samples(train),
                      eval_dataset=_Samples(evaluation) if evaluation else None, data_collator=_Collator(pad_id),
                      callbacks=[progress])
    trainer.remove_callback(PrinterCallback)  # without tqdm it prints every log dict; the pass log says it once
    progress.total = _planned_steps(trainer, len(train))
    return trainer, progress


def _planned_steps(trainer, samples: int) -> int:
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(1, len(trainer.get_train_dataloader()) // args.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * args.num_train_epochs))


class _Samples:
    """A map-style dataset over the samples (torch's DataLoader needs only these two methods)."""

    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def _progress_callback(log):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One pass-log line per logging step: step, loss and the time left at the pace so far."""

        def __init__(self):
            self.total, self.losses, self.started = 0, [], None

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()
            self.total = state.max_steps or self.total

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs, step = logs or {}, state.global_step
            if "loss" in logs:
                self.losses.append([step, round(float(logs["loss"]), 6)])
                elapsed = time.perf_counter() - (self.started or time.perf_counter())
                left = elapsed / step * max(self.total - step, 0) if step else 0.0
                log(f"step {step}/{self.total} loss {float(logs['loss']):.4f} ~{left:.0f}s left")
            elif "eval_loss" in logs and "train_runtime" not in logs:
                log(f"step {step}/{self.total} eval_loss {float(logs['eval_loss']):.4f}")

    return Progress()


def _thinned(losses: list, most: int = 100) -> list:
    """At most about `most` [step, loss] entries, evenly spaced, the last one always kept."""
    if len(losses) <= most:
        return losses
    every = math.ceil(len(losses) / most)
    return losses[::every] + ([losses[-1]] if (len(losses) - 1) % every else [])


# ---- output ----

def _write(source: Path, out_dir: Path, peft_model) -> None:
    """The input model's files (hard links: never written to) and the adapter, saved in adapter/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_tree(source, out_dir)
    adapter = out_dir / ADAPTER_DIR
    if adapter.exists():  # an adapter folder of the input's own: links to its files, replaced (not written through)
        shutil.rmtree(adapter)
    peft_model.save_pretrained(str(adapter), safe_serialization=True)
    (adapter / "README.md").unlink(missing_ok=True)  # peft's model-card stub
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    # The base is the folder the adapter sits in, wherever it is copied: no absolute path of the cache.
    config["base_model_name_or_path"] = None
    if isinstance(config.get("target_modules"), list):  # peft keeps a set: its order changes from run to run
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
