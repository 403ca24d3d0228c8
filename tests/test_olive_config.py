"""Olive's config files, both generations, run as they are: translated, validated, run for real.

The configs in tests/olive_configs/ name a hub model (olive-tests/tiny-bert-mrpc) and the hub
dataset glue/mrpc; both come from a real offline Hugging Face cache built on disk for these tests
(tests/hf_offline_cache.py): a tiny random BERT classifier, and MRPC-like pairs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import yaml

from olive_systems.cli import main
from olive_systems.errors import RecipeError
from olive_systems.olive_config import convert_file, is_olive_config, translate
from olive_systems.recipe import load_recipe

from hf_offline_cache import ACCURACY_METRIC, add_evaluate_metric, add_glue_mrpc, add_hub_model, use_offline_cache

CONFIGS = Path(__file__).parent / "olive_configs"
HUB_MODEL = "olive-tests/tiny-bert-mrpc"
# evaluate's "f1" as an evaluate.Metric module (written here; the hub's script cannot be fetched offline)
F1_METRIC = """import datasets
import evaluate


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="binary F1 of the positive class", citation="", inputs_description="integer labels",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references, pos_label=1):
        tp = sum(int(p == pos_label and r == pos_label) for p, r in zip(predictions, references))
        predicted, actual = sum(int(p == pos_label) for p in predictions), sum(int(r == pos_label) for r in references)
        return {"f1": 2 * tp / (predicted + actual) if predicted + actual else 0.0}
"""


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory, tiny_classifier) -> Path:
    """An offline HF cache holding the tiny classifier (as a hub model) and glue/mrpc."""
    root = tmp_path_factory.mktemp("hf_cache")
    add_hub_model(root, HUB_MODEL, tiny_classifier)
    add_glue_mrpc(root)
    add_evaluate_metric(root, "accuracy", ACCURACY_METRIC)
    add_evaluate_metric(root, "f1", F1_METRIC)
    return root


@pytest.fixture
def workdir(hub_root, tmp_path, monkeypatch) -> Path:
    use_offline_cache(monkeypatch, hub_root)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_config(name: str, workdir: Path) -> dict:
    """Copy the Olive config, unchanged, into the work folder and run it with the CLI."""
    config = workdir / name
    shutil.copy(CONFIGS / name, config)
    assert main(["run", "--config", str(config)]) == 0
    return load_recipe(config)


def ranked(output_dir: Path) -> dict:
    return {entry["model_id"]: entry for entry in json.loads((output_dir / "models_rank.json").read_text())}


def op_types(folder: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node}


# ---- translation: what each Olive form becomes ----

def test_seed_form_translates_to_the_native_recipe():
    raw = json.loads((CONFIGS / "seed_bert_dynamic.json").read_text())
    assert is_olive_config(raw)
    recipe = translate(raw, "seed_bert_dynamic.json")
    assert recipe["input_model"] == {"type": "HfModel", "model_path": HUB_MODEL, "task": "text-classification"}
    data = recipe["data_configs"][0]
    assert data["name"] == "__input_model_data_config__"
    assert data["load_dataset_config"] == {"data_name": "glue", "subset": "mrpc", "split": "validation"}
    assert data["pre_process_data_config"]["label_col"] == "label"
    assert data["dataloader_config"] == {"batch_size": 8}
    # an accelerator given as a string takes the engine's execution_providers
    assert recipe["systems"]["local_system"] == {
        "type": "LocalSystem", "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}
    assert recipe["passes"]["quantization"] == {
        "type": "OnnxDynamicQuantization", "config": {"per_channel": False, "reduce_range": False, "weight_type": "QInt8"}}
    assert recipe["engine"]["search_strategy"] is None


def test_flat_form_translates_engine_keys_and_output_name():
    raw = json.loads((CONFIGS / "olive_bert_dynamic.json").read_text())
    recipe = translate(raw, "olive_bert_dynamic.json")
    engine = recipe["engine"]
    assert engine["evaluator"] == "common_evaluator" and engine["host"] == engine["target"] == "local_system"
    assert engine["output_dir"] == "models/flat_dynamic"  # output_name: the run's own folder under output_dir
    assert engine["evaluate_input_model"] is True and engine["cache_dir"] == "cache"
    assert recipe["passes"]["conversion"] == {"type": "OnnxConversion", "config": {"target_opset": 17}}


def test_searchable_values_and_sampler_become_a_search_space_and_strategy():
    recipe = translate(json.loads((CONFIGS / "olive_bert_search.json").read_text()))
    assert recipe["passes"]["quantization"]["config"] == {"weight_type": {"choices": ["QInt8", "QUInt8"]},
                                                          "per_channel": {"choices": [False, True]}}
    assert recipe["engine"]["search_strategy"] == {"execution_order": "joint", "search_algorithm": "random",
                                                   "search_algorithm_config": {"num_samples": 2, "seed": 0}}


def test_onnx_quantization_without_quant_mode_is_both_kinds():
    recipe = translate(json.loads((CONFIGS / "seed_bert_search.json").read_text()))
    assert recipe["passes"]["quantization_dynamic"]["type"] == "OnnxDynamicQuantization"
    assert "data_config" not in recipe["passes"]["quantization_dynamic"]["config"]  # static settings stay static
    assert recipe["passes"]["quantization_static"]["config"]["data_config"] == "__input_model_data_config__"
    assert recipe["pass_flows"] == [["conversion", "quantization_dynamic"], ["conversion", "quantization_static"]]


# ---- the Done-when configs, run unchanged ----

def test_seed_form_dynamic_quantization_runs(workdir):
    run_config("seed_bert_dynamic.json", workdir)
    models = ranked(workdir / "models" / "seed_dynamic")
    assert set(models) == {"conversion-transformers_optimization-quantization"}
    metrics = models["conversion-transformers_optimization-quantization"]["metrics"]
    assert {"accuracy-accuracy_score", "accuracy-f1_score", "latency-avg"} <= set(metrics)
    assert "DynamicQuantizeLinear" in op_types(workdir / "models" / "seed_dynamic" / "conversion-transformers_optimization-quantization")


def test_seed_form_static_quantization_with_hub_dataset_and_hf_metric_runs(workdir):
    run_config("seed_bert_static.json", workdir)
    out = workdir / "models" / "seed_static"
    models = ranked(out)
    assert set(models) == {"conversion-quantization-perf_tuning"}
    metrics = models["conversion-quantization-perf_tuning"]["metrics"]
    assert 0 <= metrics["accuracy-accuracy"]["value"] <= 1 and "accuracy-f1" in metrics
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(out / "conversion-quantization-perf_tuning")


def test_seed_form_search_runs_every_point(workdir):
    run_config("seed_bert_search.json", workdir)
    models = ranked(workdir / "models" / "seed_search")
    # quant_mode dynamic and static, each with per_channel false and true
    assert sorted(model_id.rsplit("_", 1)[0] for model_id in models) == [
        "conversion-quantization_dynamic", "conversion-quantization_dynamic",
        "conversion-quantization_static", "conversion-quantization_static"]
    assert all("accuracy-accuracy_score" in entry["metrics"] for entry in models.values())


def test_flat_form_dynamic_quantization_runs(workdir):
    run_config("olive_bert_dynamic.json", workdir)
    models = ranked(workdir / "models" / "flat_dynamic")
    assert set(models) == {"conversion-transformers_optimization-quantization"}
    metrics = models["conversion-transformers_optimization-quantization"]["metrics"]
    assert {"accuracy-accuracy_score", "accuracy-f1_score", "accuracy-auroc"} <= set(metrics)
    assert "accuracy-accuracy_score" in json.loads((workdir / "models" / "flat_dynamic" / "input_model_metrics.json").read_text())


def test_flat_form_static_quantization_yaml_runs(workdir):
    run_config("olive_bert_static.yaml", workdir)
    out = workdir / "models" / "olive_static"
    models = ranked(out)
    assert set(models) == {"conversion-quantization-session_params_tuning"}
    assert "accuracy-accuracy" in models["conversion-quantization-session_params_tuning"]["metrics"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(out / "conversion-quantization-session_params_tuning")


def test_flat_form_search_runs_the_sampled_points(workdir):
    run_config("olive_bert_search.json", workdir)
    models = ranked(workdir / "models" / "flat_search")
    assert len(models) == 2  # max_samples: 2 of the 4 points
    # evaluate_input_model: false
    assert json.loads((workdir / "models" / "flat_search" / "input_model_metrics.json").read_text()) is None


# ---- convert-config ----

def test_convert_config_writes_a_native_recipe_that_runs_the_same(workdir, capsys):
    shutil.copy(CONFIGS / "seed_bert_dynamic.json", workdir / "olive.json")
    assert main(["convert-config", "olive.json", "--output", "native.yaml"]) == 0
    native = yaml.safe_load((workdir / "native.yaml").read_text())
    assert not is_olive_config(native)
    assert native == translate(json.loads((CONFIGS / "seed_bert_dynamic.json").read_text()))
    assert load_recipe(workdir / "native.yaml")["passes"] == load_recipe(workdir / "olive.json")["passes"]
    # the Olive config and its conversion are the same run: the second finds every step in the cache
    from olive_systems.output import WorkflowOutput

    assert main(["run", "--config", "olive.json"]) == 0
    assert main(["run", "--config", "native.yaml"]) == 0
    steps = WorkflowOutput.load(workdir / "models" / "seed_dynamic").steps
    assert steps and all(step["cached"] for step in steps), steps
    assert set(ranked(workdir / "models" / "seed_dynamic")) == {"conversion-transformers_optimization-quantization"}
    # without --output the recipe is printed
    capsys.readouterr()
    assert main(["convert-config", "olive.json"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == native


def test_convert_config_keeps_local_paths_working_from_another_folder(tmp_path):
    (tmp_path / "olive").mkdir()
    (tmp_path / "olive" / "data.csv").write_text("sentence1,sentence2,label\na,b,1\n")
    (tmp_path / "olive" / "config.json").write_text(json.dumps({
        "input_model": {"type": "ONNXModel", "config": {"model_path": "model.onnx"}},
        "data_configs": [{"name": "d", "type": "HuggingfaceContainer",
                          "params_config": {"data_name": "csv", "data_files": "data.csv", "input_cols": ["sentence1"]}}],
        "passes": {"q": {"type": "OnnxDynamicQuantization"}}}))
    (tmp_path / "olive" / "model.onnx").write_bytes(b"")
    convert_file(tmp_path / "olive" / "config.json", tmp_path / "elsewhere.yaml")
    native = yaml.safe_load((tmp_path / "elsewhere.yaml").read_text())
    assert Path(native["input_model"]["model_path"]) == tmp_path / "olive" / "model.onnx"
    assert Path(native["data_configs"][0]["load_dataset_config"]["data_files"]) == tmp_path / "olive" / "data.csv"


def test_convert_config_refuses_a_native_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"input_model": {"type": "HfModel", "model_path": "m"},
                                                     "passes": {"c": {"type": "OnnxConversion"}}}))
    with pytest.raises(RecipeError, match="already an olive-systems recipe"):
        convert_file(tmp_path / "r.yaml")


# ---- unsupported keys: all named at once, each with what to use instead ----

def test_unsupported_olive_keys_are_all_named_with_the_alternative(tmp_path, capsys):
    config = json.loads((CONFIGS / "olive_bert_dynamic.json").read_text())
    config["workflow_id"] = "bert"
    config["plot_pareto_frontier"] = True
    config["passes"]["quantization"]["nodes_to_quantize"] = ["MatMul_1"]
    config["passes"]["peephole"] = {"type": "OnnxPeepholeOptimizer"}
    config["systems"]["local_system"]["olive_managed_env"] = True
    config["evaluators"]["common_evaluator"]["metrics"][0]["user_config"] = {"evaluate_func": "my_eval"}
    config["search_strategy"] = {"execution_order": "joint", "sampler": "tpe", "output_model_num": 1}
    (tmp_path / "bad.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError) as caught:
        load_recipe(tmp_path / "bad.json")
    message = caught.value.message
    expected = {
        "workflow_id: not supported": "engine.output_dir",
        "plot_pareto_frontier": "report.html",
        "passes.quantization.nodes_to_quantize": "its options: ",
        "passes.peephole.type: OnnxPeepholeOptimizer": "use OrtTransformersOptimization",
        "systems.local_system.olive_managed_env": "VenvSystem",
        "metrics[0].user_config.evaluate_func": "metric_func",
        "search_strategy.output_model_num": "packaging_config",
    }
    lines = message.splitlines()
    for key, alternative in expected.items():
        line = next((line for line in lines if key in line), None)
        assert line is not None, f"{key} not reported in:\n{message}"
        assert alternative in line, line
    assert main(["validate", "--config", str(tmp_path / "bad.json")]) == 2
    assert "fix: " in capsys.readouterr().err


def test_default_meaning_keys_are_accepted():
    config = json.loads((CONFIGS / "olive_bert_dynamic.json").read_text())
    config.update(clean_evaluation_cache=False, log_to_file=False, workflow_id="default_workflow")
    config["passes"]["conversion"].update(dynamic=True, all_tensors_to_one_file=True)
    config["passes"]["quantization"]["quant_preprocess"] = True
    recipe = translate(config)
    assert recipe["passes"]["conversion"]["config"] == {"target_opset": 17}
    assert "quant_preprocess" not in recipe["passes"]["quantization"]["config"]


def test_a_pytorch_model_without_hf_config_or_loader_is_named():
    with pytest.raises(RecipeError, match=r"input_model\.model_path: missing"):
        translate({"input_model": {"type": "PyTorchModel", "config": {}}, "passes": {"c": {"type": "OnnxConversion"}}})


def test_olive_systems_become_native_systems(tmp_path):
    """Seed form: AzureML with the top-level azureml_client, PythonEnvironment, string accelerators."""
    (tmp_path / "requirements.txt").write_text("onnxruntime==1.20.1\n")
    recipe = translate({
        "azureml_client": {"subscription_id": "sub", "resource_group": "rg", "workspace_name": "ws",
                           "keyvault_name": "kv"},
        "input_model": {"type": "ONNXModel", "config": {"model_path": "model.onnx"}},
        "systems": {
            "aml": {"type": "AzureML", "config": {"aml_compute": "cpu-cluster", "accelerators": ["cpu"],
                                                  "aml_docker_config": {"base_image": "myacr.azurecr.io/ort:1"},
                                                  "hf_token": True}},
            "env": {"type": "PythonEnvironment", "config": {"python_environment_path": "/opt/venv/bin",
                                                            "requirements_file": "requirements.txt"}},
        },
        "passes": {"q": {"type": "OnnxDynamicQuantization"}},
        "engine": {"host": "env", "target": "aml", "execution_providers": ["CPUExecutionProvider"]},
    })
    assert recipe["systems"]["aml"] == {
        "type": "AzureMLSystem", "compute": "cpu-cluster", "hf_token": True, "keyvault_name": "kv",
        "environment_image": "myacr.azurecr.io/ort:1",
        "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
        "azureml_client": {"subscription_id": "sub", "resource_group": "rg", "workspace_name": "ws"}}
    assert recipe["systems"]["env"] == {"type": "VenvSystem", "python": "/opt/venv/bin/python",
                                        "requirements": "requirements.txt",
                                        "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}
    assert recipe["input_model"] == {"type": "OnnxModel", "model_path": "model.onnx"}
    assert recipe["engine"] == {"host": "env", "target": "aml"}


def test_a_docker_system_built_from_a_dockerfile_names_the_native_images():
    with pytest.raises(RecipeError) as caught:
        translate({"input_model": {"type": "ONNXModel", "model_path": "m.onnx"},
                   "systems": {"d": {"type": "Docker", "local_docker_config": {"image_name": "olive", "dockerfile": "Dockerfile"}}},
                   "passes": {"q": {"type": "OnnxDynamicQuantization"}}})
    assert "systems.d.local_docker_config" in caught.value.message and "image: cpu | openvino | cuda" in caught.value.message


def test_the_repository_recipes_are_not_taken_for_olive_configs():
    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        assert not is_olive_config(yaml.safe_load(path.read_text())), path.name


def test_session_tuning_lists_and_execution_modes_take_the_native_form():
    recipe = translate({"input_model": {"type": "ONNXModel", "model_path": "m.onnx"},
                        "passes": {"t": {"type": "OrtPerfTuning", "intra_thread_num_list": 4, "execution_mode_list": [0, 1]}}})
    assert recipe["passes"]["t"] == {"type": "OrtSessionParamsTuning", "config": {
        "intra_op_thread_num_list": [4], "execution_mode_list": ["ORT_SEQUENTIAL", "ORT_PARALLEL"]}}


def test_onnx_quantization_without_search_is_static_and_needs_calibration_data():
    config = {"input_model": {"type": "ONNXModel", "model_path": "m.onnx"},
              "passes": {"q": {"type": "OnnxQuantization", "per_channel": "SEARCHABLE_VALUES"}}}
    with pytest.raises(RecipeError) as caught:
        translate(config)
    assert "passes.q: SEARCHABLE_VALUES needs a search" in caught.value.message
    assert "passes.q.data_config: static quantization" in caught.value.message
    config["passes"]["q"] = {"type": "OnnxQuantization", "disable_search": True, "per_channel": "SEARCHABLE_VALUES",
                             "data_config": "calib"}
    # per_channel takes its default; activation_type is Olive's default (QInt8), not olive-systems' (QUInt8)
    assert translate(config)["passes"] == {"q": {"type": "OnnxStaticQuantization",
                                                 "config": {"activation_type": "QInt8", "data_config": "calib"}}}


def test_seed_form_defaults_metrics_to_the_model_dataset_and_eps_to_the_local_system():
    """The seed form's metrics without a data_config score on hf_config.dataset; with no systems,
    engine.execution_providers are the local system's."""
    recipe = translate(json.loads((CONFIGS / "seed_bert_search.json").read_text()))
    assert {m["data_config"] for m in recipe["evaluators"]["common_evaluator"]["metrics"]} == {"__input_model_data_config__"}
    assert recipe["systems"] == {"local_system": {"type": "LocalSystem", "accelerators": [
        {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}}


def test_dummy_data_container_of_either_form():
    shapes = {"input_shapes": [[1, 16], [1, 16]], "input_names": ["input_ids", "attention_mask"],
              "input_types": ["int64", "int64"]}
    for data in ({"name": "dummy", "type": "DummyDataContainer", "params_config": shapes},
                 {"name": "dummy", "type": "DummyDataContainer", "load_dataset_config": shapes}):
        recipe = translate({"input_model": {"type": "ONNXModel", "model_path": "m.onnx"}, "data_configs": [data],
                            "passes": {"t": {"type": "OrtPerfTuning", "data_config": "dummy"}}})
        assert recipe["data_configs"] == [{"name": "dummy", "type": "DummyDataContainer", "load_dataset_config": shapes}]


def test_olive_data_functions_are_refused_with_the_reason():
    with pytest.raises(RecipeError) as caught:
        translate({"input_model": {"type": "ONNXModel", "model_path": "m.onnx"},
                   "data_configs": [{"name": "d", "user_script": "user.py",
                                     "load_dataset_config": {"type": "my_load", "params": {"data_dir": "x"}},
                                     "post_process_data_config": {"type": "my_post"},
                                     "dataloader_config": {"type": "create_dataloader", "params": {"batch_size": 1}}}],
                   "passes": {"q": {"type": "OnnxDynamicQuantization"}}})
    message = caught.value.message
    for part in ("load_dataset_config.type: my_load", "post_process_data_config.type: my_post",
                 "dataloader_config.type: create_dataloader"):
        assert f"data_configs[0].{part}: an Olive data function" in message


def test_post_processing_options_are_refused_not_dropped():
    with pytest.raises(RecipeError, match=r"data_configs\[0\]\.post_process_data_config\.top_k: not supported"):
        translate({"input_model": {"type": "ONNXModel", "model_path": "m.onnx"},
                   "data_configs": [{"name": "d", "load_dataset_config": {"data_name": "glue", "subset": "mrpc"},
                                     "post_process_data_config": {"type": "text_classification_post_process",
                                                                  "params": {"top_k": 2}}}],
                   "passes": {"q": {"type": "OnnxDynamicQuantization"}}})


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.iterdir()))
def test_every_config_converts_to_a_recipe_that_loads_the_same(name, workdir):
    shutil.copy(CONFIGS / name, workdir / name)
    assert main(["convert-config", name, "--output", "native.yaml"]) == 0
    olive, native = load_recipe(workdir / name), load_recipe(workdir / "native.yaml")
    assert {**olive, "name": None} == {**native, "name": None}


def test_pre_processing_for_another_model_or_task_is_named():
    config = {"input_model": {"type": "HfModel", "model_path": HUB_MODEL, "task": "text-classification"},
              # Olive 0.3: data configs as a mapping of name -> config
              "data_configs": {"d": {"type": "HuggingfaceContainer", "params_config": {
                  "data_name": "glue", "subset": "mrpc", "input_cols": ["sentence1"], "model_name": HUB_MODEL,
                  "task": "text-classification"}}},
              "passes": {"q": {"type": "OnnxDynamicQuantization"}}, "evaluate_input_model": False}
    assert translate(config)["data_configs"] == [{"name": "d", "load_dataset_config": {"data_name": "glue", "subset": "mrpc"},
                                                  "pre_process_data_config": {"type": "tokenize", "input_cols": ["sentence1"]}}]
    config["data_configs"]["d"]["params_config"].update(model_name="bert-base-uncased", task="fill-mask")
    with pytest.raises(RecipeError) as caught:
        translate(config)
    assert "pre_process_data_config.model_name: bert-base-uncased is not the input model's" in caught.value.message
    assert "pre_process_data_config.task: fill-mask is not the input model's" in caught.value.message


def test_a_custom_pytorch_model_keeps_its_loader():
    io_config = {"input_names": ["x"], "output_names": ["y"], "dynamic_axes": {"x": {"0": "batch"}}}
    recipe = translate({"input_model": {"type": "PyTorchModel", "config": {
        "model_script": "user_script.py", "script_dir": "lib", "model_loader": "load_model",
        "io_config": io_config, "dummy_inputs_func": "dummy_inputs"}},
        "passes": {"conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}}}, "output_dir": "out"})
    assert recipe["input_model"] == {"type": "PyTorchModel", "model_script": "user_script.py", "script_dir": "lib",
                                     "model_loader": "load_model", "io_config": io_config,
                                     "dummy_inputs_func": "dummy_inputs"}


def test_inline_systems_and_an_unused_azureml_client():
    config = {"input_model": {"type": "ONNXModel", "model_path": "m.onnx"},
              "passes": {"q": {"type": "OnnxDynamicQuantization"}},
              "host": {"type": "LocalSystem", "accelerators": [{"device": "cpu"}]},
              "target": {"type": "LocalSystem", "config": {"accelerators": ["cpu"]}}}
    recipe = translate(config)
    assert recipe["engine"] == {"host": "host_system", "target": "target_system"}
    assert recipe["systems"]["target_system"] == {"type": "LocalSystem", "accelerators": [
        {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}
    config["azureml_client"] = {"subscription_id": "s", "resource_group": "r", "workspace_name": "w"}
    with pytest.raises(RecipeError, match="azureml_client: nothing here uses it"):
        translate(config)


def test_an_azureml_model_takes_the_top_level_azureml_client(tmp_path):
    recipe = translate({"azureml_client": {"aml_config_path": "config.json"},
                        "input_model": {"type": "HfModel", "config": {
                            "model_path": {"type": "azureml_model", "config": {"name": "bert", "version": "3"}}}},
                        "passes": {"c": {"type": "OnnxConversion"}}})
    assert recipe["input_model"]["model_path"] == {"type": "azureml_model", "name": "bert", "version": "3",
                                                   "azureml_client": {"config_path": "config.json"}}
