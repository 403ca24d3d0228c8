"""Decoders with their KV cache: real torch exports (TorchScript and dynamo) checked step by step
against torch, run through onnxruntime-genai, and bad generative input refused before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_decoder
from olive_systems.errors import RecipeError
from olive_systems.models import ModelRef
from olive_systems.passes.base import Accelerator, PassContext
from olive_systems.recipe import load_recipe

CTX = PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, print)


def export(folder: Path, out: Path, task="text-generation-with-past", **config) -> ModelRef:
    from olive_systems.passes.conversion import OnnxConversion

    ref = ModelRef(type="HfModel", path=str(folder), hash="h", task=task)
    return OnnxConversion().run(ref, OnnxConversion.resolve_config(config), out, CTX)


def torch_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def ort_prefill_then_decode(onnx_folder: Path, ids: np.ndarray, prefill: int) -> np.ndarray:
    """Logits of every position: `prefill` tokens at once, then one token per step with the cache."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    past = {i.name: np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32) for i in past_inputs}
    logits, start = [], 0
    for stop in [prefill, *range(prefill + 1, ids.shape[1] + 1)]:
        feed = {"input_ids": ids[:, start:stop], "attention_mask": np.ones((ids.shape[0], stop), np.int64), **past}
        if "position_ids" in names:
            feed["position_ids"] = np.broadcast_to(np.arange(start, stop), (ids.shape[0], stop - start)).astype(np.int64)
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        logits.append(outputs["logits"])
        past = {name: outputs[name.replace("past_key_values.", "present.")] for name in past}
        start = stop
    return np.concatenate(logits, axis=1)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "phi3", "gpt2"])
def test_kv_cache_export_matches_torch_step_by_step(tmp_path, architecture):
    folder = build_tiny_decoder(tmp_path / "hf", architecture)
    out = export(folder, tmp_path / "onnx")
    ids = np.random.default_rng(0).integers(0, 900, (2, 12)).astype(np.int64)
    expected = torch_logits(folder, ids)
    got = ort_prefill_then_decode(Path(out.path), ids, prefill=5)  # 5 at once, then 7 decode steps
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3
    import onnx

    graph = onnx.load(str(Path(out.path) / "model.onnx"), load_external_data=False).graph
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert inputs["past_key_values.1.value"][0] == "batch_size" and inputs["past_key_values.1.value"][2] == "past_sequence_length"
    assert [o.name for o in graph.output][:3] == ["logits", "present.0.key", "present.0.value"]


def test_dynamo_export_of_a_decoder_with_external_data(tmp_path, tiny_llama):
    out = export(tiny_llama, tmp_path / "onnx", use_dynamo_exporter=True)
    folder = Path(out.path)
    assert (folder / "model.onnx.data").is_file()
    import onnx

    onnx.load(str(folder / "model.onnx"))  # external data loads (no hard-link refusal)
    ids = np.random.default_rng(1).integers(0, 900, (1, 9)).astype(np.int64)
    assert np.abs(ort_prefill_then_decode(folder, ids, prefill=4) - torch_logits(tiny_llama, ids)).max() < 1e-3


def test_dynamo_export_of_bert(tmp_path, tiny_bert):
    out = export(tiny_bert, tmp_path / "onnx", task="feature-extraction", use_dynamo_exporter=True)
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(out.path) / "model.onnx"))
    for length in (7, 19):  # dynamic sequence length
        feed = {i.name: np.ones((2, length), np.int64) for i in session.get_inputs()}
        assert session.run(None, feed)[0].shape[:2] == (2, length)


def test_export_without_cache_and_with_fixed_shapes(tmp_path, tiny_llama):
    out = export(tiny_llama, tmp_path / "onnx", task="text-generation", fixed_param_dict={"batch_size": 1})
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(out.path) / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "position_ids"]
    assert session.get_inputs()[0].shape == [1, "sequence_length"]
    with pytest.raises(Exception, match="fixed_param_dict names \\['batch'\\]"):
        export(tiny_llama, tmp_path / "bad", task="text-generation", fixed_param_dict={"batch": 1})


def test_genai_runs_the_exported_folder_like_torch(tmp_path, tiny_llama):
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    out = export(tiny_llama, tmp_path / "onnx")
    prompt = [5, 17, 99, 3, 250, 11]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  max_new_tokens=10, min_new_tokens=10, do_sample=False)[0].tolist()
    genai = og.Model(out.path)
    params = og.GeneratorParams(genai)
    params.set_search_options(max_length=len(prompt) + 10, min_length=len(prompt) + 10)
    generator = og.Generator(genai, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    assert [int(t) for t in generator.get_sequence(0)] == expected


def _recipe(model_path: Path, **input_model) -> dict:
    return {"input_model": {"type": "HfModel", "model_path": str(model_path), **input_model},
            "passes": {"conversion": {"type": "OnnxConversion"}}}


def test_unknown_task_is_refused_at_validation(tiny_llama):
    with pytest.raises(RecipeError) as error:
        load_recipe(_recipe(tiny_llama, task="text-generaton"))
    assert "input_model.task" in error.value.message and "text-generation" in error.value.message


def test_loader_never_falls_back_to_a_headless_model(tiny_llama):
    from olive_systems.models import load_hf_model

    with pytest.raises(RecipeError, match="not a task olive-systems knows"):
        load_hf_model(ModelRef(type="HfModel", path=str(tiny_llama), hash="h", task="summarize-this"))
    model = load_hf_model(ModelRef(type="HfModel", path=str(tiny_llama), hash="h", task="text-generation-with-past"))
    assert hasattr(model, "lm_head")


def test_io_config_with_an_unknown_key_is_rejected(tiny_bert):
    io_config = {"input_names": ["input_ids"], "output_names": ["out"], "dynamic_axis": {}}
    with pytest.raises(RecipeError, match="unknown key 'dynamic_axis'; did you mean 'dynamic_axes'"):
        load_recipe(_recipe(tiny_bert, task="feature-extraction", io_config=io_config))


def test_missing_gguf_and_tokenizerless_folders_are_refused(tmp_path, tiny_llama):
    with pytest.raises(RecipeError, match="gguf_file 'nope.gguf' is not in"):
        load_recipe(_recipe(tiny_llama, task="text-generation", gguf_file="nope.gguf"))
    bare = tmp_path / "bare"
    shutil.copytree(tiny_llama, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(RecipeError, match="has no tokenizer"):
        load_recipe(_recipe(bare, task="text-generation"))
    with pytest.raises(RecipeError, match="no config.json"):
        load_recipe(_recipe(tmp_path, task="text-generation"))


def test_a_prompt_longer_than_the_context_is_refused_at_validation(tiny_llama):
    recipe = _recipe(tiny_llama, task="text-generation-with-past")
    recipe["evaluators"] = {"e": {"metrics": [{"name": "g", "type": "generation", "sub_types": [{"name": "ttft_ms"}],
                                               "metric_config": {"prompt_tokens": 200, "new_tokens": 100}}]}}
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert "evaluators.e.metrics[0].metric_config: prompt_tokens (200) + new_tokens (100)" in error.value.message
    assert "context of 256 tokens" in error.value.message
