"""bert_ptq's test twin on a tiny random BERT: real export, fusion, both quantizations, tuning, evaluation."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml

import olive_systems
from olive_systems.cache import LocalCache

from conftest import tiny_recipe

USER_SCRIPT = '''
import numpy as np

def mean_similarity(predictions, targets):
    return {"mean_cosine": float(np.mean(predictions))}

def io_config(model):
    return {"input_names": ["ids", "mask"], "output_names": ["hidden"],
            "dynamic_axes": {"ids": {0: "b", 1: "s"}, "mask": {0: "b", 1: "s"}, "hidden": {0: "b", 1: "s"}}}

def dummy_inputs(model):
    import torch
    return {"input_ids": torch.ones(1, 8, dtype=torch.int64), "attention_mask": torch.ones(1, 8, dtype=torch.int64)}

def broken_dummy_inputs(model):
    import torch
    return (torch.zeros(1, 8, dtype=torch.float32), torch.ones(1, 8, 3))  # wrong dtypes and ranks
'''


@pytest.fixture(scope="module")
def run_dir(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "user_script.py").write_text(USER_SCRIPT)
    recipe = tiny_recipe(tiny_bert, tmp)
    recipe["evaluators"]["common"]["metrics"].append(
        {"name": "custom", "type": "custom", "data_config": "pairs", "sub_types": [{"name": "mean_cosine"}],
         "user_config": {"user_script": str(tmp / "user_script.py"), "metric_func": "mean_similarity"}})
    recipe["evaluators"]["common"]["metrics"].append(
        {"name": "throughput", "type": "throughput", "data_config": "calibration", "sub_types": [{"name": "avg"}],
         "metric_config": {"warmup_num": 1, "repeat_test_num": 5}})
    recipe["passes"]["fp16_on_torch"] = {"type": "OnnxFloatToFloat16"}
    recipe["pass_flows"].append(["fp16_on_torch"])  # a flow that must fail: fp16 needs an ONNX model
    recipe["passes"]["fp16"] = {"type": "OnnxFloatToFloat16"}
    recipe["pass_flows"].append(["conversion", "fp16"])
    events = []
    output = olive_systems.run(recipe, on_event=events.append)
    return tmp, recipe, output, events


def test_every_candidate_is_written_ranked_and_loadable(run_dir, tiny_bert):
    tmp, _, output, _ = run_dir
    out = tmp / "out"
    ranked = json.loads((out / "models_rank.json").read_text())
    ids = {"conversion", "conversion-fusion-dynamic-tuning", "conversion-fusion-static", "conversion-fp16"}
    assert {entry["model_id"] for entry in ranked} == ids
    assert [entry["rank"] for entry in ranked] == [1, 2, 3, 4]
    for entry in ranked:
        folder = out / entry["model_id"]
        for name in ("model.onnx", "inference_config.json", "run_history.json", "metrics.json", "tokenizer.json", "config.json"):
            assert (folder / name).is_file(), f"{entry['model_id']} lacks {name}"
        assert set(entry["metrics"]) >= {"latency-p50", "accuracy-accuracy_score", "fidelity-cosine_mean",
                                         "custom-mean_cosine", "throughput-avg"}
        assert entry["metrics"]["throughput-avg"]["value"] > 0 and entry["metrics"]["throughput-avg"]["higher_is_better"]
    assert (out / "input_model_metrics.json").is_file()
    best = output.get_best_candidate()
    assert best.rank == 1 and best.model_id == ranked[0]["model_id"]
    # the output folder is directly usable: ORT session plus the tokenizer that sits beside the model
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = out / "conversion"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(["a quick test sentence"], return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    onnx_out = session.run(None, {k: v for k, v in encoded.items() if k in names})[0]
    with torch.no_grad():
        torch_out = AutoModel.from_pretrained(tiny_bert)(**{k: torch.from_numpy(v) for k, v in encoded.items()})[0].numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4)


def test_passes_really_transform_the_model(run_dir):
    tmp, _, output, _ = run_dir
    dynamic = output.get_output_model_by_id("conversion-fusion-dynamic-tuning")
    static = output.get_output_model_by_id("conversion-fusion-static")
    fused = dynamic.model_config["config"]["model_attributes"]["fused_operators"]
    assert fused.get("Attention") == 2 and fused.get("SkipLayerNormalization")
    dynamic_ops = {n.op_type for n in onnx.load(dynamic.model_path).graph.node}
    static_ops = {n.op_type for n in onnx.load(static.model_path).graph.node}
    assert "DynamicQuantizeLinear" in dynamic_ops or "MatMulInteger" in dynamic_ops or "DynamicQuantizeMatMul" in dynamic_ops
    assert "QuantizeLinear" in static_ops and "DequantizeLinear" in static_ops
    fp16 = onnx.load(output.get_output_model_by_id("conversion-fp16").model_path)
    assert {init.data_type for init in fp16.graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64  # io types kept
    settings = dynamic.get_inference_config()["session_options"]
    assert settings.get("intra_op_num_threads") in (None, 1, 2)  # ORT's default unless a setting won beyond the interval
    assert dynamic.from_pass() == "OrtSessionParamsTuning"
    history = output.trace_back_run_history(dynamic.model_id)
    assert [h["type"] for h in list(history.values())[:-1]] == [
        "OrtSessionParamsTuning", "OnnxDynamicQuantization", "OrtTransformersOptimization", "OnnxConversion"]


def test_metrics_are_measured_against_the_input_model(run_dir):
    _, _, output, _ = run_dir
    reference = output.get_input_model_metrics()
    fp32 = output.get_output_model_by_id("conversion").metrics_value
    assert fp32["fidelity-cosine_mean"] > 0.9999  # the export is the same function as the torch model
    assert abs(fp32["accuracy-accuracy_score"] - reference["accuracy-accuracy_score"]["value"]) < 1e-9
    dynamic = output.get_output_model_by_id("conversion-fusion-dynamic-tuning").metrics_value
    assert 0.5 < dynamic["fidelity-cosine_mean"] < 1.0  # quantization changed the numbers, a little
    assert all(m.metrics_value["latency-p50"] > 0 for m in output.get_output_models())


def test_failed_flow_is_recorded_and_the_others_finish(run_dir):
    _, _, output, events = run_dir
    assert len(output.get_output_models()) == 4
    assert [f["model_id"] for f in output.failures] == ["fp16_on_torch"]
    assert "takes OnnxModel, got HfModel" in output.failures[0]["error"]
    assert any(e["kind"] == "failed" and e["name"] == "fp16_on_torch" for e in events)


def test_rerun_reuses_every_pass_and_evaluation(run_dir):
    tmp, recipe, first, _ = run_dir
    recipe = dict(recipe, engine={**recipe["engine"], "output_dir": str(tmp / "out2")})
    again = olive_systems.run(recipe)
    assert again.steps and all(step["cached"] for step in again.steps), [s for s in again.steps if not s["cached"]]
    assert {m.model_id: m.metrics_value for m in again.get_output_models()} == \
           {m.model_id: m.metrics_value for m in first.get_output_models()}
    # a corrupted cache entry is detected and that pass alone is recomputed
    cache = LocalCache(tmp / "cache")
    entry = next(e for e in cache.entries("runs") if e.meta["pass"] == "static")
    target = entry.path / "model" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    third = olive_systems.run(dict(recipe, engine={**recipe["engine"], "output_dir": str(tmp / "out3")}))
    recomputed = [s["name"] for s in third.steps if not s["cached"]]
    assert recomputed == ["static"]


def test_export_error_is_recorded_with_its_cause(tiny_bert, tmp_path):
    (tmp_path / "script.py").write_text(USER_SCRIPT)
    recipe = tiny_recipe(tiny_bert, tmp_path, evaluators={})
    recipe["input_model"].update(model_script=str(tmp_path / "script.py"), dummy_inputs_func="broken_dummy_inputs")
    recipe["pass_flows"] = [["conversion"]]
    recipe["engine"].pop("evaluator", None)
    output = olive_systems.run(recipe)
    assert not output.has_output_model()
    assert output.failures[0]["error"].startswith("pass 'conversion' failed: torch.onnx.export failed")
    assert not list((tmp_path / "cache" / "runs").glob("*/*"))  # nothing half-written was kept


def test_io_config_and_dummy_inputs_from_the_model_script(tiny_bert, tmp_path):
    (tmp_path / "script.py").write_text(USER_SCRIPT)
    recipe = tiny_recipe(tiny_bert, tmp_path, evaluators={}, pass_flows=[["conversion"]])
    recipe["input_model"].update(model_script=str(tmp_path / "script.py"), io_config="io_config",
                                 dummy_inputs_func="dummy_inputs")
    output = olive_systems.run(recipe)
    graph = onnx.load(output.get_best_candidate().model_path).graph
    assert [i.name for i in graph.input] == ["ids", "mask"] and [o.name for o in graph.output] == ["hidden"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "olive_systems", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_bad_recipe_is_one_clear_error_without_traceback(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["dynamic"]["type"] = "OnnxQuantise"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: bad.yaml: passes.dynamic.type: 'OnnxQuantise' is not one of")
    assert "fix:" in result.stderr
    assert not (tmp_path / "out").exists()
    missing = cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_output_dir_that_is_not_ours_is_never_replaced(tiny_bert, tmp_path):
    precious = tmp_path / "out"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    recipe = tiny_recipe(tiny_bert, tmp_path)
    with pytest.raises(olive_systems.OliveSystemsError, match="not an olive-systems output"):
        olive_systems.run(recipe)
    assert (precious / "thesis.tex").read_text() == "years of work"
