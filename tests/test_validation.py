"""Mistakes are caught before any work, each with one line naming the cause and the fix; a bad input
exits 2 and a failed flow 1, with or without --verbose; a run without a candidate never replaces
good results; failures are labelled by the step that failed and hints are right or absent.

Everything runs for real on the tiny BERT: the CLI in process, real files, real exports."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_recipe
from olive_systems.cli import main
from olive_systems.job import RUN_STOPPING, read_result

FLAKY_METRIC = '''
from pathlib import Path

CALLS = Path({calls!r})


def score(predictions, targets):
    """Fails on the evaluations listed in FAIL (1 is the first: the input model's)."""
    calls = int(CALLS.read_text()) + 1 if CALLS.exists() else 1
    CALLS.write_text(str(calls))
    if calls in {fail}:
        raise ValueError(f"metric broke on evaluation {{calls}}")
    return {{"agree": 1.0}}
'''


def small_recipe(model: Path, tmp_path: Path, flows=(("conversion",),)) -> dict:
    """One pass, one quick accuracy metric (and fidelity): a run of a few seconds."""
    recipe = tiny_recipe(model, tmp_path)
    metrics = recipe["evaluators"]["common"]["metrics"]
    recipe["evaluators"]["common"]["metrics"] = [metrics[1], metrics[2]]
    recipe["pass_flows"] = [list(flow) for flow in flows]
    return recipe


def write(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


# ---- each bad input: exit 2, one line that names it, before any work ----

def _sub_type(r, tmp):
    r["evaluators"]["common"]["metrics"].append({"name": "latency", "type": "latency", "data_config": "calibration",
                                                  "sub_types": [{"name": "p55"}]})


def _other_type_sub_type(r, tmp):
    r["evaluators"]["common"]["metrics"][0]["sub_types"][1]["name"] = "perplexity"


def _task(r, tmp):
    r["input_model"]["task"] = "feature-extractoin"


def _column(r, tmp):
    r["data_configs"][0]["pre_process_data_config"]["input_cols"] = ["sentence1", "sentence3"]


def _label_column(r, tmp):
    r["data_configs"][0]["pre_process_data_config"]["label_col"] = "lable"


def _io_config(r, tmp):
    r["input_model"]["io_config"] = {"input_names": ["input_ids"], "output_names": ["last_hidden_state"],
                                     "dynamic_axes": {"input_idz": {"0": "batch"}}}


def _tokenizer(r, tmp):
    (tmp / "no_tokenizer").mkdir()
    r["data_configs"][1]["tokenizer"] = str(tmp / "no_tokenizer")


def _empty_model_folder(r, tmp):
    (tmp / "empty").mkdir()
    r["input_model"]["model_path"] = str(tmp / "empty")


def _no_weights(r, tmp):
    (tmp / "no_weights").mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(Path(r["input_model"]["model_path"]) / name, tmp / "no_weights" / name)
    r["input_model"]["model_path"] = str(tmp / "no_weights")


def _no_labels(r, tmp):
    r["data_configs"][0]["pre_process_data_config"].pop("label_col")


def _not_onnx(r, tmp):
    (tmp / "onnx").mkdir()
    (tmp / "onnx" / "model.onnx").write_text("this is a text file")
    r["input_model"] = {"type": "OnnxModel", "model_path": str(tmp / "onnx" / "model.onnx")}
    r["data_configs"][0]["tokenizer"] = r["data_configs"][1]["tokenizer"] = r["_tokenizer"]
    r["pass_flows"] = [["dynamic"]]


def _empty_csv(r, tmp):
    (tmp / "empty.csv").write_text("")
    r["data_configs"][1]["load_dataset_config"]["data_files"] = str(tmp / "empty.csv")


def _header_only_csv(r, tmp):
    (tmp / "header.csv").write_text("text\n")
    r["data_configs"][1]["load_dataset_config"]["data_files"] = str(tmp / "header.csv")


def _json_column(r, tmp):
    (tmp / "rows.jsonl").write_text('{"sentence": "a cat", "label": 1}\n{"sentence": "a dog", "label": 0}\n')
    r["data_configs"][1]["load_dataset_config"] = {"data_name": "json", "data_files": str(tmp / "rows.jsonl")}


def _no_input_cols(r, tmp):
    r["data_configs"][1]["pre_process_data_config"].pop("input_cols")


def _dummy_names(r, tmp):
    r["data_configs"].append({"name": "dummy", "type": "DummyDataContainer", "load_dataset_config": {
        "input_shapes": [[1, 8]], "input_names": ["input_ids", "attention_mask"]}})


def _model_tokenizer(r, tmp):  # one line for the model folder, not one more per data config that tokenizes
    (tmp / "no_tok").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(r["input_model"]["model_path"]) / name, tmp / "no_tok" / name)
    r["input_model"]["model_path"] = str(tmp / "no_tok")


def _output_dir(r, tmp):
    (tmp / "a_file").write_text("not a folder")
    r["engine"]["output_dir"] = str(tmp / "a_file" / "out")


BAD_INPUTS = {
    "sub_type": (_sub_type, "'p55' is not a sub-type of latency metrics"),
    "sub_type_of_another_type": (_other_type_sub_type, "'perplexity' is not a sub-type of accuracy metrics"),
    "task": (_task, "input_model.task: 'feature-extractoin' is not one of"),
    "column": (_column, "input_cols[1]: 'sentence3' is not a column of the data"),
    "label_column": (_label_column, "label_col: 'lable' is not a column of the data"),
    "io_config": (_io_config, "dynamic_axes.input_idz: 'input_idz' is neither an input nor an output name"),
    "tokenizer": (_tokenizer, "no_tokenizer has no tokenizer"),
    "empty_model_folder": (_empty_model_folder, "empty is empty"),
    "no_weights": (_no_weights, "no_weights has a config.json but no weights"),
    "no_labels": (_no_labels, "an accuracy metric needs labels, and data config 'pairs' has no label_col"),
    "not_onnx": (_not_onnx, "model.onnx is not an ONNX model"),
    "empty_csv": (_empty_csv, "empty.csv is empty"),
    "header_only_csv": (_header_only_csv, "header.csv has a header (text) but no rows: it is empty"),
    "json_column": (_json_column, "input_cols[0]: 'text' is not a column of the data (its columns: sentence, label)"),
    "no_input_cols": (_no_input_cols, "pre_process_data_config.input_cols is not set: tokenize needs the text columns"),
    "dummy_names": (_dummy_names, "load_dataset_config has 1 input_shapes and 2 input_names"),
    "model_tokenizer": (_model_tokenizer, "no_tok has no tokenizer"),
    "output_dir": (_output_dir, "cannot be created: "),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_validate_names_each_bad_input_in_one_line(case, tiny_bert, tmp_path, capsys):
    recipe = small_recipe(tiny_bert, tmp_path)
    recipe["_tokenizer"] = str(tiny_bert)
    mutate, expected = BAD_INPUTS[case]
    mutate(recipe, tmp_path)
    recipe.pop("_tokenizer")
    assert main(["validate", "--config", str(write(tmp_path, recipe))]) == 2
    found = errors(capsys.readouterr().err)
    assert len(found) == 1, found
    assert expected in found[0]


@pytest.mark.parametrize("case", ["sub_type", "column", "empty_csv", "output_dir"])
def test_run_refuses_bad_input_before_any_work(case, tiny_bert, tmp_path, capsys):
    recipe = small_recipe(tiny_bert, tmp_path)
    BAD_INPUTS[case][0](recipe, tmp_path)
    assert main(["run", "--config", str(write(tmp_path, recipe))]) == 2
    assert BAD_INPUTS[case][1] in capsys.readouterr().err
    cache = Path(recipe["engine"]["cache_dir"])
    assert not list(cache.glob("runs/*")) and not list(cache.glob("evaluations/*"))  # nothing computed


def test_every_problem_is_reported_at_once(tiny_bert, tmp_path, capsys):
    recipe = small_recipe(tiny_bert, tmp_path)
    for case in ("sub_type", "column", "empty_csv", "io_config"):
        BAD_INPUTS[case][0](recipe, tmp_path)
    recipe["data_configs"][0]["load_dataset_config"]["data_files"] = str(tmp_path / "missing.csv")
    assert main(["validate", "--config", str(write(tmp_path, recipe))]) == 2
    found = errors(capsys.readouterr().err)
    assert len(found) == 4, found  # the missing file is reported; its columns cannot be checked
    assert any("missing.csv' does not exist" in line for line in found)
    assert any("'p55'" in line for line in found) and any("empty.csv is empty" in line for line in found)


def test_onnx_folder_without_model_onnx(tiny_bert, tmp_path, capsys):
    (tmp_path / "onnx").mkdir()
    shutil.copy(tiny_bert / "vocab.txt", tmp_path / "onnx" / "vocab.txt")
    recipe = small_recipe(tiny_bert, tmp_path, flows=[["dynamic"]])
    recipe["input_model"] = {"type": "OnnxModel", "model_path": str(tmp_path / "onnx")}
    assert main(["validate", "--config", str(write(tmp_path, recipe))]) == 2
    assert "holds no model.onnx" in capsys.readouterr().err


def test_verbose_keeps_exit_code_2_and_adds_the_traceback(tiny_bert, tmp_path, capsys):
    recipe = small_recipe(tiny_bert, tmp_path)
    _sub_type(recipe, tmp_path)
    assert main(["--verbose", "validate", "--config", str(write(tmp_path, recipe))]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "error: " in err


# ---- runs that fail ----

def flaky(tmp_path: Path, fail: set[int]) -> dict:
    script = tmp_path / "flaky_metric.py"
    script.write_text(FLAKY_METRIC.format(calls=str(tmp_path / "calls"), fail=fail))
    return {"name": "flaky", "type": "custom", "data_config": "pairs", "sub_types": [{"name": "agree"}],
            "user_config": {"user_script": str(script), "metric_func": "score"}}


def test_failing_input_model_evaluation_is_recorded_and_candidates_still_run(tiny_bert, tmp_path, capsys):
    recipe = small_recipe(tiny_bert, tmp_path)
    recipe["evaluators"]["common"]["metrics"].append(flaky(tmp_path, {1}))
    assert main(["run", "--config", str(write(tmp_path, recipe))]) == 1  # a failure, not bad input
    data = json.loads((tmp_path / "out" / "workflow_output.json").read_text())
    assert [m["model_id"] for m in data["models"]] == ["conversion"]
    assert "fidelity-cosine_mean" not in data["models"][0]["metrics"]  # nothing to compare with
    [failure] = data["failures"]
    assert failure["model_id"] == "input model" and failure["step"] == "evaluation"
    assert failure["error"].startswith("evaluation failed: ValueError: metric broke on evaluation 1")


def test_failing_evaluation_is_labelled_as_an_evaluation(tiny_bert, tmp_path, capsys):
    recipe = small_recipe(tiny_bert, tmp_path)
    recipe["evaluators"]["common"]["metrics"].append(flaky(tmp_path, {2}))
    assert main(["run", "--config", str(write(tmp_path, recipe))]) == 1
    err = capsys.readouterr().err
    assert "conversion: evaluation failed: ValueError: metric broke on evaluation 2" in err
    assert "pass 'conversion' failed" not in err


def test_run_without_candidate_keeps_previous_output(tiny_bert, tmp_path, capsys):
    good = small_recipe(tiny_bert, tmp_path)
    assert main(["run", "--config", str(write(tmp_path, good))]) == 0
    out = tmp_path / "out"
    before = (out / "workflow_output.json").read_text()

    bad = copy.deepcopy(good)  # every flow fails: an unknown fusion option
    bad["passes"]["fusion"]["config"]["optimization_options"] = {"no_such_option": True}
    bad["pass_flows"] = [["conversion", "fusion"]]
    capsys.readouterr()
    assert main(["run", "--config", str(write(tmp_path, bad, "bad.yaml"))]) == 1
    err = capsys.readouterr().err
    assert (out / "workflow_output.json").read_text() == before and (out / "conversion" / "model.onnx").is_file()
    report = tmp_path / "out.failed"
    assert f"the previous output {out} (1 candidates" in err and f"failure report is in {report}" in err
    failed = json.loads((report / "workflow_output.json").read_text())
    assert failed["models"] == [] and failed["failures"][0]["step"] == "pass 'fusion'"
    assert (report / "report.html").is_file()

    assert main(["run", "--config", str(write(tmp_path, good))]) == 0  # a run with candidates replaces it
    assert f"replaced the previous output {out} (1 candidates" in capsys.readouterr().err


def test_verbose_failed_flow_exits_1_with_log_tail(tiny_bert, tmp_path, capsys):
    recipe = small_recipe(tiny_bert, tmp_path, flows=[["conversion", "fusion"]])
    recipe["passes"]["fusion"]["config"]["optimization_options"] = {"no_such_option": True}
    assert main(["--verbose", "run", "--config", str(write(tmp_path, recipe))]) == 1
    err = capsys.readouterr().err
    assert "--- conversion-fusion: pass 'fusion' failed: unknown optimization option 'no_such_option'" in err
    assert "  log: runner: pass job" in err


def test_export_error_does_not_flood_the_console(tiny_bert, tmp_path, capfd):
    recipe = small_recipe(tiny_bert, tmp_path)
    recipe["passes"]["conversion"]["config"]["target_opset"] = 9  # the exporter fails and prints its graph
    assert main(["run", "--config", str(write(tmp_path, recipe))]) == 1
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err and len((out + err).splitlines()) < 40
    data = json.loads((tmp_path / "out" / "workflow_output.json").read_text())
    log_file = Path(data["failures"][0]["log_file"])
    assert log_file.parent == tmp_path / "out" / "logs" and "Torch IR graph at exception" in log_file.read_text()


def test_static_quantization_shape_error_points_at_the_data_not_nodes_to_exclude(tiny_bert, tmp_path, capsys):
    recipe = small_recipe(tiny_bert, tmp_path, flows=[["conversion", "fixed", "static"]])
    shape = [1, 128]  # the calibration data is padded to 32 tokens
    recipe["passes"]["fixed"] = {"type": "DynamicToFixedShape", "config": {"input_shapes": {
        "input_ids": shape, "attention_mask": shape, "token_type_ids": shape}}}
    assert main(["run", "--config", str(write(tmp_path, recipe))]) == 1
    [failure] = json.loads((tmp_path / "out" / "workflow_output.json").read_text())["failures"]
    assert "invalid dimensions" in failure["error"] and "nodes_to_exclude" not in (failure["fix"] or "")
    assert "data config 'calibration'" in failure["fix"]


def test_unfused_distilbert_hint_does_not_blame_num_heads():
    from olive_systems.passes.transformers_optimization import _unfused_fix

    distilbert = {"model_type": "distilbert", "n_heads": 12, "dim": 768}
    assert "num_heads" not in _unfused_fix({"num_heads": 0, "hidden_size": 0}, distilbert)
    assert "num_heads 8 (config.json: 12)" in _unfused_fix({"num_heads": 8, "hidden_size": 0}, distilbert)


def test_a_job_ended_by_a_stop_is_interrupted_not_out_of_memory(tmp_path):
    (tmp_path / "job.json").write_text("{}")
    assert "interrupted" in read_result(tmp_path / "job.json", [], 1.0, -15, 60)["error"]["message"]
    assert "most likely out of memory" in read_result(tmp_path / "job.json", [], 1.0, 137, 60)["error"]["message"]
    # the system saw its OOM killer act: certain, not a guess
    assert "out of memory by the OOM killer" in read_result(tmp_path / "job.json", [], 1.0, 137, 60,
                                                             oom_killed=True)["error"]["message"]
    # killed at its timeout (it ignored the stop signal, so `timeout -k` killed it): not memory
    late = read_result(tmp_path / "job.json", [], 61.0, 137, 60)["error"]["message"]
    assert "past its timeout of 60 s" in late and "memory" not in late
    RUN_STOPPING.set()
    try:  # the run is stopping: a container removed under its job reads as killed (137), yet was interrupted
        assert "interrupted" in read_result(tmp_path / "job.json", [], 1.0, 137, 60)["error"]["message"]
    finally:
        RUN_STOPPING.clear()


def test_sigterm_interrupts_the_run_cleanly(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)  # several flows and a latency metric: work left when the signal comes
    process = subprocess.Popen([sys.executable, "-m", "olive_systems", "run", "--config", str(write(tmp_path, recipe))],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in process.stderr:  # the first finished step: the run is under way
        seen.append(line)
        if "✓" in line:
            break
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=300)[1]
    assert process.returncode == 143, "".join(seen) + rest
    assert "interrupted" in rest and "out of memory" not in rest
    assert not (tmp_path / "out").exists()  # nothing half-written
