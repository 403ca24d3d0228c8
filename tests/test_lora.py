"""LoRA / QLoRA and the finetune workflow on the tiny random llama: real training of a few steps, the
adapter beside the unchanged model, the engine's cache (no retraining), and the refusals that come
before any training."""

import argparse
import json
from pathlib import Path

import pytest

import olive_systems
from olive_systems.data import load_batches
from olive_systems.errors import PassError, RecipeError
from olive_systems.models import ModelRef, file_sha256, folder_sha256, load_hf_model
from olive_systems.passes import get_pass_class, pass_types
from olive_systems.passes.base import Accelerator, PassContext
from olive_systems.passes.lora import qlora_unavailable
from olive_systems.recipe import load_recipe
from olive_systems.workflows import build_recipe
from olive_systems.workflows.arguments import add_function_arguments, call_with_arguments
from olive_systems.workflows.finetune import training_progress

from conftest import DATA

INSTRUCTIONS = str(DATA / "llm_instructions.jsonl")
TEMPLATE = "Question: {question}\nAnswer: {answer}"
TRAINING = {"max_steps": 8, "learning_rate": 2e-2, "per_device_train_batch_size": 4, "logging_steps": 1}


def data_config(name: str = "train", **pre) -> dict:
    return {"name": name, "load_dataset_config": {"data_name": "json", "data_files": [INSTRUCTIONS]},
            "pre_process_data_config": {"type": "text_generation", "text_template": TEMPLATE, "max_seq_len": 32,
                                        "max_samples": 8, **pre}}


@pytest.fixture(scope="module")
def base(tiny_llama) -> ModelRef:
    return ModelRef("HfModel", str(tiny_llama), folder_sha256(tiny_llama), task="text-generation-with-past")


def run_pass(model: ModelRef, out: Path, config: dict, data: dict | None = None, logs: list | None = None,
             pass_type: str = "LoRA") -> ModelRef:
    """The pass as the runner calls it, its data pre-processed by the same function the engine uses."""
    data = data or {"train": data_config()}
    ctx = PassContext(Accelerator("cpu", "CPUExecutionProvider"),
                      load_data=lambda name, ref: load_batches(data[name], Path(ref.path)),
                      log=logs.append if logs is not None else (lambda message: None))
    pass_cls = get_pass_class(pass_type)
    return pass_cls().run(model, pass_cls.resolve_config({"train_data_config": "train", **config}), out, ctx)


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "out"
    logs: list[str] = []
    result = run_pass(base, out, {"training_args": TRAINING}, logs=logs)
    return result, out, logs


# ---- the pass ----

def test_registered_with_its_contract():
    assert {"LoRA", "QLoRA"} <= set(pass_types())
    lora, qlora = get_pass_class("LoRA"), get_pass_class("QLoRA")
    assert lora.input_types == ("HfModel",) and not lora.accelerator_dependent
    assert lora.depends_on == ("torch", "transformers", "peft")
    assert lora.required_config == ("train_data_config",)
    defaults = lora.resolve_config({"train_data_config": "t"})
    assert {key: defaults[key] for key in ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "torch_dtype",
                                           "method", "training_args")} == {
        "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": None, "torch_dtype": "float32",
        "method": "lora", "training_args": {}}
    assert qlora.resolve_config({"train_data_config": "t"})["method"] == "qlora"
    assert qlora.config_schema["method"]["enum"] == ["qlora"]


def test_training_lowers_the_loss_and_shows_progress(trained):
    result, _, logs = trained
    summary = result.attributes["lora"]
    losses = [loss for _, loss in summary["loss_history"]]
    assert summary["steps"] == 8 and len(losses) == 8
    assert losses[-1] < losses[0] and sum(losses[-3:]) < sum(losses[:3])
    assert summary["targets"] == ["q_proj", "v_proj"]  # peft's default for llama
    assert summary["r"] == 16 and summary["alpha"] == 32 and summary["train_samples_per_second"] > 0
    progress = [line for line in logs if line.startswith("step ")]
    assert len(progress) == 8 and progress[0].startswith("step 1/8 loss ") and progress[-1].endswith("~0s left")


def test_output_is_the_unchanged_model_with_the_adapter_beside_it(trained, base, tiny_llama):
    result, out, _ = trained
    assert result.type == "HfModel" and Path(result.path) == out and result.task == base.task
    assert result.attributes["adapter_path"] == "adapter" and result.hash == folder_sha256(out)
    assert file_sha256(out / "model.safetensors") == file_sha256(tiny_llama / "model.safetensors")
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["target_modules"] == ["q_proj", "v_proj"]
    assert adapter_config["base_model_name_or_path"] is None  # no absolute path of where it was trained


def test_peft_loads_the_adapter_and_it_changes_the_model(trained, tiny_llama):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, out, _ = trained
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out), out / "adapter").eval()
        tuned = peft(ids).logits
        loaded = load_hf_model(result)  # the base, then its adapter applied unmerged
        assert isinstance(loaded, PeftModel)
        assert torch.allclose(loaded(ids).logits, tuned, atol=1e-5)
    assert not torch.allclose(plain, tuned, atol=1e-4)


# ---- refusals: one line each, before any training, nothing written ----

REFUSALS = [
    ({}, {"train": data_config(text_template=None, text_field="prompt")}, RecipeError, ["prompt", "question", "answer"]),
    ({}, {"train": data_config(text_template="Q: {question} A: {reply}")}, RecipeError, ["reply", "question"]),
    ({"target_modules": ["q_proj", "attn_out"]}, None, PassError, ["attn_out", "k_proj", "o_proj", "gate_proj"]),
    ({"training_args": {"learning_rat": 1e-3}}, None, PassError, ["learning_rat", "learning_rate"]),
    ({"training_args": {"output_dir": "x"}}, None, PassError, ["output_dir"]),
]


@pytest.mark.parametrize("config,data,error,named", REFUSALS,
                         ids=["text_field", "text_template", "target_modules", "training_arg", "output_dir"])
def test_bad_input_is_refused_before_training(config, data, error, named, base, tmp_path):
    logs: list[str] = []
    with pytest.raises(error) as refused:
        run_pass(base, tmp_path / "out", config, data, logs)
    message = refused.value.message
    assert "\n" not in message and refused.value.fix
    assert all(word in message for word in named), message
    assert not any(line.startswith("step ") or line.startswith("training ") for line in logs)
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_a_decoder_is_refused(base, tmp_path):
    with pytest.raises(PassError, match="decoders"):
        run_pass(ModelRef(**{**base.to_dict(), "task": "feature-extraction"}), tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(qlora_unavailable() is None, reason="bitsandbytes' 4-bit kernels run here")
@pytest.mark.parametrize("pass_type,config", [("QLoRA", {}), ("LoRA", {"method": "qlora"})])
def test_qlora_where_bitsandbytes_cannot_run_says_what_it_needs(pass_type, config, base, tmp_path):
    with pytest.raises(PassError) as refused:
        run_pass(base, tmp_path / "out", config, pass_type=pass_type)
    assert "QLoRA needs bitsandbytes" in refused.value.message and "CUDA" in refused.value.message
    assert "method lora" in refused.value.fix and "\n" not in refused.value.message
    assert not (tmp_path / "out").exists()


# ---- through the engine: cached like every pass ----

def test_a_second_identical_run_comes_from_the_cache_without_training(tiny_llama, tmp_path):
    recipe = {
        "input_model": {"type": "HfModel", "model_path": str(tiny_llama), "task": "text-generation-with-past"},
        "data_configs": [data_config()],
        "passes": {"lora": {"type": "LoRA", "config": {"train_data_config": "train", "lora_r": 4, "lora_alpha": 8,
                                                        "training_args": {**TRAINING, "max_steps": 3}}}},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    }
    first_events, second_events = [], []
    first = olive_systems.run(recipe, on_event=first_events.append)
    assert not first.failures, first.failures
    assert any(e["kind"] == "log" and ": step 3/3 loss" in e["message"] for e in first_events)
    second = olive_systems.run(recipe, on_event=second_events.append)
    assert all(step["cached"] for step in second.steps) and second.steps
    assert not any(e["kind"] == "log" and ": step " in e.get("message", "") for e in second_events)
    folder = Path(second.get_best_candidate().model_path)
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert second.get_best_candidate().model_config["config"]["model_attributes"]["adapter_path"] == "adapter"
    # other data is another run
    recipe["data_configs"] = [data_config(max_samples=4)]
    third_events = []
    olive_systems.run(recipe, on_event=third_events.append)
    assert any(e["kind"] == "log" and ": step 3/3 loss" in e["message"] for e in third_events)


# ---- the finetune workflow ----

@pytest.fixture(scope="module")
def tiny_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("finetune_data") / "pairs.jsonl"
    rows = [json.loads(line) for line in Path(INSTRUCTIONS).read_text().splitlines()[:12]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


FINETUNE = dict(text_template=TEMPLATE, max_seq_len=32, train_split="train[:10]", eval_split="train[10:]",
                lora_r=4, lora_alpha=8, torch_dtype="float32", batch_size=2)


def test_finetune_end_to_end(tiny_llama, tiny_jsonl, tmp_path_factory):
    work = tmp_path_factory.mktemp("finetune")
    out = work / "out"
    output = olive_systems.finetune(str(tiny_llama), data_files=str(tiny_jsonl), output_path=str(out),
                                    cache_dir=str(work / "cache"), save_config_file=True, max_steps=4,
                                    learning_rate=1e-2, **FINETUNE)
    assert not output.failures, output.failures
    best = output.get_best_candidate()
    assert best.model_id == "lora" and best.from_pass() == "LoRA"
    folder = Path(best.model_path)
    assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "model.safetensors").is_file()
    attributes = best.model_config["config"]["model_attributes"]
    assert attributes["adapter_path"] == "adapter" and attributes["lora"]["steps"] == 4
    assert attributes["lora"]["r"] == 4 and "eval_loss" in attributes["lora"]
    assert "perplexity-perplexity" in best.metrics and "perplexity-perplexity" in output.get_input_model_metrics()
    recipe = load_recipe(out / "finetune_config.yaml")  # the saved recipe is valid as written
    config = recipe["passes"]["lora"]["config"]
    assert config["training_args"] == {"max_steps": 4, "learning_rate": 1e-2, "per_device_train_batch_size": 2,
                                       "per_device_eval_batch_size": 2}
    assert config["eval_data_config"] == "eval" and config["torch_dtype"] == "float32"

    # the command line: unknown --key value options are training arguments; the same call is cached
    from olive_systems.cli import main

    code = main(["finetune", "--model_name_or_path", str(tiny_llama), "--data_files", str(tiny_jsonl),
                 "--output_path", str(work / "cli"), "--cache_dir", str(work / "cache"), "--text_template", TEMPLATE,
                 "--max_seq_len", "32", "--train_split", "train[:10]", "--eval_split", "train[10:]", "--lora_r", "4",
                 "--lora_alpha", "8", "--torch_dtype", "float32", "--batch_size", "2", "--max_steps", "4",
                 "--learning-rate=1e-2"])
    assert code == 0
    again = olive_systems.WorkflowOutput.load(work / "cli")
    assert all(step["cached"] for step in again.steps)


FINETUNE_REFUSALS = [
    ({"learning_rat": 1e-3}, "learning_rat"),
    ({"output_dir": "x"}, "output_dir"),
    ({"data_files": None}, "data_name"),
    ({"input_cols": ["question"]}, "input_cols"),
    ({"task": "feature-extraction"}, "task"),
    ({"lora_r": 0}, "lora_r"),
    ({"per_device_train_batch_size": 8}, "per_device_train_batch_size"),  # and batch_size=2
]


@pytest.mark.parametrize("arguments,named", FINETUNE_REFUSALS, ids=[n for _, n in FINETUNE_REFUSALS])
def test_finetune_refuses_before_any_work(arguments, named, tiny_llama, tiny_jsonl, tmp_path):
    with pytest.raises(RecipeError) as refused:
        olive_systems.finetune(str(tiny_llama), **{"data_files": str(tiny_jsonl), "output_path": str(tmp_path / "out"),
                                                   "cache_dir": str(tmp_path / "cache"), **FINETUNE, **arguments})
    assert named in refused.value.message and refused.value.fix
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(qlora_unavailable() is None, reason="bitsandbytes' 4-bit kernels run here")
def test_finetune_qlora_on_this_machine_is_refused(tiny_llama, tiny_jsonl, tmp_path):
    with pytest.raises(RecipeError) as refused:
        olive_systems.finetune(str(tiny_llama), method="qlora", data_files=str(tiny_jsonl),
                               output_path=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert "QLoRA needs bitsandbytes" in refused.value.message and "method lora" in refused.value.fix
    assert list(tmp_path.iterdir()) == []


def test_finetune_recipe(tiny_llama, tiny_jsonl, tmp_path):
    recipe = build_recipe("finetune", model_name_or_path=str(tiny_llama), data_files=str(tiny_jsonl),
                          output_path=str(tmp_path / "o"), target_modules="q_proj, k_proj", text_field="answer",
                          warmup_steps=2, seed=3)
    entry = recipe["passes"]["lora"]
    assert entry["type"] == "LoRA" and recipe["pass_flows"] == [["lora"]]
    assert entry["config"]["target_modules"] == ["q_proj", "k_proj"] and entry["config"]["seed"] == 3
    assert entry["config"]["training_args"] == {"warmup_steps": 2}
    assert entry["config"]["lora_r"] == 64 and entry["config"]["lora_alpha"] == 16  # the seed's defaults
    assert entry["config"]["torch_dtype"] == "bfloat16"
    assert [dc["name"] for dc in recipe["data_configs"]] == ["train"] and "evaluators" not in recipe
    assert recipe["data_configs"][0]["load_dataset_config"]["split"] == "train"
    load_recipe(recipe)


def test_keyword_arguments_on_the_command_line():
    parser = argparse.ArgumentParser()
    add_function_arguments(parser, olive_systems.finetune)
    args = parser.parse_args(["--model_name_or_path", "m", "--max_steps", "3", "--learning-rate=1e-3",
                              "--gradient_checkpointing", "--weight_decay", "-0.5",
                              "--training_kwargs", "warmup_steps=2", "lr_scheduler_type=cosine"])
    seen = {}

    def command(model_name_or_path: str, **training_kwargs):
        seen.update(training_kwargs)

    call_with_arguments(command, args)
    assert seen == {"warmup_steps": 2, "lr_scheduler_type": "cosine", "max_steps": 3, "learning_rate": 1e-3,
                    "gradient_checkpointing": True, "weight_decay": -0.5}


def test_training_progress_is_live_on_the_command_line_and_logged_through_the_api(caplog):
    shown = []
    on_event = training_progress(shown.append)  # the command line's progress display
    step = {"kind": "log", "name": "lora", "message": "lora: step 3/40 loss 2.1034 ~57s left"}
    other = {"kind": "log", "name": "lora", "message": "lora: training 131 samples of up to 128 tokens"}
    on_event(step)
    on_event(other)
    assert shown == [{"kind": "start", "name": "lora: step 3/40 loss 2.1034 ~57s left", "step": "training"}, step, other]
    with caplog.at_level("INFO", logger="olive_systems.workflows"):
        training_progress(None)(step)  # no display: the workflow logger, at INFO
    assert "step 3/40 loss 2.1034" in caplog.text
