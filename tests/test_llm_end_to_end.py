"""llm_int4's twin on a tiny decoder, through the engine: the fp32 KV-cache export, model-builder
int4, RTN int4 and int8 weight-only candidates, scored with the generative metrics, written to an
output folder whose candidates load with onnx.load and run as is under onnxruntime-genai, and
packaged into a Zipfile whose chat sample generates text with the packaged model."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest

import olive_systems

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data"


def llm_recipe(model: Path, tmp: Path) -> dict:
    return {
        "input_model": {"type": "HfModel", "model_path": str(model), "task": "text-generation-with-past"},
        "data_configs": [
            {"name": "corpus", "load_dataset_config": {"data_name": "text", "data_files": str(DATA / "llm_corpus.txt")},
             "pre_process_data_config": {"type": "text_generation", "max_seq_len": 64, "max_samples": 4}},
            {"name": "prompts", "load_dataset_config": {"data_name": "json", "data_files": str(DATA / "llm_prompts.jsonl")},
             "pre_process_data_config": {"type": "text_generation", "text_field": "prompt", "use_chat_template": True,
                                         "max_samples": 3}},
        ],
        "evaluators": {"llm": {"metrics": [
            {"name": "generation", "type": "generation", "data_config": "corpus",
             "metric_config": {"prompt_tokens": 16, "new_tokens": 8, "warmup_num": 1, "repeat_test_num": 2},
             "sub_types": [{"name": "tokens_per_second", "priority": 1}, {"name": "ttft_ms"}]},
            {"name": "perplexity", "type": "perplexity", "data_config": "corpus",
             "sub_types": [{"name": "perplexity", "priority": 2, "goal": {"type": "percent-max-degradation", "value": 50}}]},
            {"name": "agreement", "type": "greedy_agreement", "data_config": "prompts", "metric_config": {"new_tokens": 6},
             "sub_types": [{"name": "token_match"}]},
            {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "mb"}]},
        ]}},
        "passes": {
            "conversion": {"type": "OnnxConversion"},
            "builder_int4": {"type": "ModelBuilder", "config": {"precision": "int4", "int4_block_size": 16}},
            "rtn_int4": {"type": "OnnxWeightOnlyQuantization", "config": {"bits": 4, "block_size": 16}},
            "int8": {"type": "OnnxBlockWiseRtnQuantization", "config": {"bits": 8, "block_size": 16}},
        },
        "pass_flows": [["conversion"], ["builder_int4"], ["conversion", "rtn_int4"], ["conversion", "int8"]],
        "engine": {"cache_dir": str(tmp / "cache"), "output_dir": str(tmp / "out"),
                   "packaging_config": [{"type": "Zipfile", "name": "OutputModels"}]},
    }


@pytest.fixture(scope="module")
def llm_run(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm")
    return tmp, olive_systems.run(llm_recipe(tiny_llama, tmp))


def test_every_generative_candidate_is_ranked_with_its_metrics(llm_run):
    tmp, output = llm_run
    data = json.loads((tmp / "out" / "workflow_output.json").read_text())
    assert not data["failures"], data["failures"]
    ids = {m.model_id for m in output.get_output_models()}
    assert ids == {"conversion", "builder_int4", "conversion-rtn_int4", "conversion-int8"}
    for model in output.get_output_models():
        values = model.metrics_value
        assert values["generation-tokens_per_second"] > 0 and values["perplexity-perplexity"] > 1
        assert 0 <= values["agreement-token_match"] <= 1
    fp32 = output.get_output_model_by_id("conversion").metrics_value
    assert fp32["agreement-token_match"] == 1.0  # the fp32 export decodes what torch decodes
    assert abs(fp32["perplexity-perplexity"] / output.get_input_model_metrics()["perplexity-perplexity"]["value"] - 1) < 1e-3
    sizes = {m.model_id: m.metrics_value["size-mb"] for m in output.get_output_models()}
    assert sizes["conversion-rtn_int4"] < sizes["conversion-int8"] < sizes["conversion"]


def test_each_candidate_folder_loads_with_onnx_and_runs_in_genai(llm_run):
    import onnxruntime_genai as og

    tmp, output = llm_run
    for model in output.get_output_models():
        folder = Path(model.model_path)
        folder = folder if folder.is_dir() else folder.parent
        onnx.load(str(folder / "model.onnx"))  # external data included, no hard-link refusal
        assert (folder / "genai_config.json").is_file() and (folder / "tokenizer.json").is_file()
        genai = og.Model(str(folder))
        tokenizer = og.Tokenizer(genai)
        params = og.GeneratorParams(genai)
        ids = tokenizer.encode("The river")
        params.set_search_options(max_length=len(ids) + 5, min_length=len(ids) + 5)
        generator = og.Generator(genai, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        assert len(generator.get_sequence(0)) == len(ids) + 5


def test_packaged_chat_sample_generates_with_the_packaged_model(llm_run, tmp_path):
    tmp, _ = llm_run
    with zipfile.ZipFile(tmp / "out" / "OutputModels.zip") as archive:
        names = archive.namelist()
        assert "SampleCode/Python/generate.py" in names
        assert any(n.startswith("ONNXRuntimePackages/onnxruntime_genai-") for n in names)
        archive.extractall(tmp_path)
    done = subprocess.run([sys.executable, str(tmp_path / "SampleCode" / "Python" / "generate.py"), "--max-new-tokens", "6",
                           "Tell me about rivers."], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # the random tiny model says something; the real one is checked in the benchmark


def test_a_warm_rerun_computes_nothing(llm_run, tiny_llama):
    tmp, first = llm_run
    again = olive_systems.run(llm_recipe(tiny_llama, tmp))
    steps = json.loads((tmp / "out" / "workflow_output.json").read_text())["steps"]
    assert steps and all(step["cached"] for step in steps)
    assert {m.model_id: m.metrics_value for m in again.get_output_models()} == \
        {m.model_id: m.metrics_value for m in first.get_output_models()}
