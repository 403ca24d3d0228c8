"""Data and metric conveniences: task-default post-processing, DummyDataContainer, model_class,
the data-function contract of the README (run as written there), Olive's metric names and
`backend: huggingface_metrics` through Hugging Face evaluate, all on glue/mrpc from a real offline
datasets cache (tests/hf_offline_cache.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hf_offline_cache import ACCURACY_METRIC, ROC_AUC_METRIC, add_evaluate_metric, add_glue_mrpc, use_offline_cache
from olive_systems.errors import RecipeError
from olive_systems.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf_cache")
    add_glue_mrpc(root)
    return root


@pytest.fixture
def offline(monkeypatch, hf_root) -> Path:
    use_offline_cache(monkeypatch, hf_root)
    return hf_root


MRPC = {"name": "mrpc", "load_dataset_config": {"data_name": "glue", "subset": "mrpc", "split": "validation"},
        "pre_process_data_config": {"type": "tokenize", "input_cols": ["sentence1", "sentence2"], "label_col": "label", "max_length": 32},
        "dataloader_config": {"batch_size": 16}}
ACCURACY = {"name": "accuracy", "type": "accuracy", "data_config": "mrpc",
            "sub_types": [{"name": "accuracy_score", "priority": 1}, {"name": "f1_score"}, {"name": "f1"},
                          {"name": "precision"}, {"name": "recall"}, {"name": "auroc"}]}


def _recipe(tmp_path: Path, model: Path, metrics: list[dict], data_configs=(MRPC,), task="text-classification",
            passes=None, **input_model) -> dict:
    return {"input_model": {"type": "HfModel", "model_path": str(model), "task": task, **input_model},
            "data_configs": [dict(dc) for dc in data_configs],
            "evaluators": {"common": {"metrics": metrics}},
            "passes": passes or {"conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}}},
            "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}}


def _metrics(output_dir: Path) -> tuple[dict, list[dict]]:
    """(the input model's metrics, each candidate's); failures fail the test with their errors."""
    workflow = json.loads((output_dir / "workflow_output.json").read_text())
    assert not workflow["failures"], workflow["failures"]
    return workflow["input_model_metrics"], [model["metrics"] for model in workflow["models"]]


def test_a_classifier_scores_accuracy_without_an_argmax_line(offline, tiny_classifier, tmp_path):
    """Before: the logits [n, 2] were compared with [n] labels ("operands could not be broadcast")."""
    from olive_systems.api import run

    size = {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "mb"}, {"name": "bytes"}]}  # Olive's size_on_disk
    recipe = _recipe(tmp_path, tiny_classifier, [ACCURACY, size])
    assert load_recipe(recipe)["data_configs"]["mrpc"]["post_process_data_config"] == {"type": "argmax"}
    run(recipe)
    source, candidates = _metrics(tmp_path / "out")
    for metrics in [source, *candidates]:
        megabytes = metrics.pop("size-mb")["value"]
        assert 0 < megabytes < 10 and metrics.pop("size-bytes")["value"] == pytest.approx(megabytes * 2**20, rel=1e-3)
        values = {key.split("-", 1)[1]: entry["value"] for key, entry in metrics.items()}
        assert set(values) == {"accuracy_score", "f1_score", "f1", "precision", "recall", "auroc"}
        assert all(0.0 <= value <= 1.0 for value in values.values())
        assert values["f1_score"] == values["f1"]
    # the ONNX export scores (almost) what torch does
    assert abs(candidates[0]["accuracy-auroc"]["value"] - source["accuracy-auroc"]["value"]) < 0.02


def test_scores_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    from olive_systems.evaluation.metrics import class_scores, classification_scores

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 2)).astype(np.float32)
    targets = rng.integers(0, 2, 50)
    predictions = logits.argmax(axis=1)
    scores = classification_scores(predictions, targets, class_scores([logits[:20], logits[20:]], predictions))
    assert scores["accuracy_score"] == pytest.approx(accuracy_score(targets, predictions))
    assert scores["f1_score"] == pytest.approx(f1_score(targets, predictions))
    assert scores["precision"] == pytest.approx(precision_score(targets, predictions))
    assert scores["recall"] == pytest.approx(recall_score(targets, predictions))
    assert scores["auroc"] == pytest.approx(roc_auc_score(targets, logits[:, 1] - logits[:, 0]))


def test_outputs_that_are_not_labels_are_refused_with_the_fix(offline, tiny_bert, tmp_path):
    """A feature extractor's hidden states are no labels: one line naming the post-processing."""
    from olive_systems.data import load_batches
    from olive_systems.evaluation.evaluator import evaluate
    from olive_systems.models import ModelRef

    recipe = load_recipe(_recipe(tmp_path, tiny_bert, [ACCURACY], task="feature-extraction"))
    config = recipe["data_configs"]["mrpc"]
    assert "post_process_data_config" not in config  # no default for a feature extractor
    model = ModelRef(type="HfModel", path=str(tiny_bert), hash="x", task="feature-extraction")
    with pytest.raises(RecipeError) as caught:
        evaluate(model, [ACCURACY], {"mrpc": (config, load_batches(config, tiny_bert))}, "CPUExecutionProvider", None)
    assert "differ in shape from batch to batch" in caught.value.message and "argmax" in caught.value.fix
    padded = dict(config, pre_process_data_config={**config["pre_process_data_config"], "padding": "max_length"})
    with pytest.raises(RecipeError) as caught:
        evaluate(model, [ACCURACY], {"mrpc": (padded, load_batches(padded, tiny_bert))}, "CPUExecutionProvider", None)
    assert "post-processed outputs have shape [60, 32, 32] for 60 labels" in caught.value.message
    assert "{type: argmax}" in caught.value.fix


def test_dummy_data_container_feeds_shapes_and_types_without_a_dataset(tiny_bert, tmp_path):
    from olive_systems.api import run
    from olive_systems.data import load_batches

    dummy = {"name": "dummy", "type": "DummyDataContainer",
             "load_dataset_config": {"input_shapes": [[2, 16], [2, 16]], "input_types": ["int64", "int64"],
                                     "max_samples": 3}}
    batches = load_batches(dummy, tiny_bert)  # names: the model's own inputs, in order
    assert [list(feed) for feed in batches.inputs] == [["input_ids", "token_type_ids"]] * 3
    assert batches.inputs[0]["input_ids"].shape == (2, 16) and batches.inputs[0]["input_ids"].dtype == np.int64
    assert batches.targets is None
    latency = {"name": "latency", "type": "latency", "data_config": "dummy",
               "sub_types": [{"name": "avg", "priority": 1}], "metric_config": {"warmup_num": 1, "repeat_test_num": 3}}
    three = dict(dummy, load_dataset_config={"input_shapes": [[1, 32]] * 3,  # every input the export declares
                                             "input_names": ["input_ids", "attention_mask", "token_type_ids"]})
    recipe = _recipe(tmp_path, tiny_bert, [latency], data_configs=[three], task="feature-extraction")
    run(recipe)
    source, candidates = _metrics(tmp_path / "out")
    assert source["latency-avg"]["value"] > 0 and candidates[0]["latency-avg"]["value"] > 0
    bad = dict(dummy, load_dataset_config={"input_shapes": [[1, 4]], "input_names": ["a", "b"]})
    with pytest.raises(RecipeError, match="1 input_shapes, 2 input_names"):
        load_batches(bad, tiny_bert)


def test_model_class_loads_that_class(tiny_classifier, tmp_path):
    from olive_systems.models import ModelRef, load_hf_model

    ref = ModelRef(type="HfModel", path=str(tiny_classifier), hash="x", task="feature-extraction",
                   attributes={"model_class": "BertForSequenceClassification"})
    assert type(load_hf_model(ref)).__name__ == "BertForSequenceClassification"
    assert type(load_hf_model(ModelRef(type="HfModel", path=str(tiny_classifier), hash="x",
                                       task="feature-extraction"))).__name__ == "BertModel"
    with pytest.raises(RecipeError, match="'BertForNothing' is not a class of transformers"):
        load_hf_model(ModelRef(type="HfModel", path=str(tiny_classifier), hash="x", attributes={"model_class": "BertForNothing"}))
    recipe = load_recipe(_recipe(tmp_path, tiny_classifier, [ACCURACY], model_class="BertForSequenceClassification"))
    assert recipe["input_model"]["model_class"] == "BertForSequenceClassification"


def _readme_example() -> str:
    section = (REPO / "README.md").read_text().split("#### Data functions", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_data_functions_run_as_written(offline, tiny_classifier, tmp_path):
    from olive_systems.api import run

    script = tmp_path / "data_functions.py"
    script.write_text(_readme_example())
    data = dict(MRPC, user_script=str(script), pre_process_data_config={"type": "sentence_pairs", "max_length": 32},
                post_process_data_config={"type": "likelier_class"})
    recipe = _recipe(tmp_path, tiny_classifier, [ACCURACY], data_configs=[data])
    run(recipe)
    source, candidates = _metrics(tmp_path / "out")
    # the same inputs and argmax as the built-in tokenize + task default: the same scores
    builtin = _recipe(tmp_path / "builtin", tiny_classifier, [ACCURACY])
    run(builtin)
    builtin_source, _ = _metrics(tmp_path / "builtin" / "out")
    assert source["accuracy-accuracy_score"]["value"] == builtin_source["accuracy-accuracy_score"]["value"]
    assert source["accuracy-auroc"]["value"] == pytest.approx(builtin_source["accuracy-auroc"]["value"])


def test_a_pre_process_function_that_returns_something_else_is_named(offline, tiny_bert, tmp_path):
    from olive_systems.data import load_batches

    script = tmp_path / "bad.py"
    script.write_text("def texts(dataset, **kwargs):\n    return list(dataset['sentence1'])\n")
    data = dict(MRPC, user_script=str(script), pre_process_data_config={"type": "texts"})
    with pytest.raises(RecipeError, match="pre-process function 'texts' returned list"):
        load_batches(data, tiny_bert)


def test_huggingface_metrics_through_evaluate_offline(offline, tiny_classifier, tmp_path):
    """evaluate.load('accuracy') reads the metric script from evaluate's modules cache: the value is
    the one olive-systems computes itself."""
    from olive_systems.api import run

    add_evaluate_metric(offline, "accuracy", ACCURACY_METRIC)
    add_evaluate_metric(offline, "roc_auc", ROC_AUC_METRIC)  # takes prediction_scores: the class probabilities
    hf = {"name": "hf", "type": "accuracy", "backend": "huggingface_metrics", "data_config": "mrpc",
          "sub_types": [{"name": "accuracy", "priority": 1}, {"name": "roc_auc"}]}
    run(_recipe(tmp_path, tiny_classifier, [hf, ACCURACY]))
    source, candidates = _metrics(tmp_path / "out")
    for metrics in [source, *candidates]:
        assert metrics["hf-accuracy"]["value"] == pytest.approx(metrics["accuracy-accuracy_score"]["value"])
        assert metrics["hf-roc_auc"]["value"] == pytest.approx(metrics["accuracy-auroc"]["value"])


def test_a_huggingface_metric_evaluate_cannot_load_offline_says_so(offline, tiny_classifier, tmp_path):
    from olive_systems.data import load_batches
    from olive_systems.evaluation.evaluator import evaluate
    from olive_systems.models import ModelRef

    hf = {"name": "hf", "type": "accuracy", "backend": "huggingface_metrics", "data_config": "mrpc",
          "sub_types": [{"name": "matthews_correlation"}]}
    config = load_recipe(_recipe(tmp_path, tiny_classifier, [hf]))["data_configs"]["mrpc"]
    model = ModelRef(type="HfModel", path=str(tiny_classifier), hash="x", task="text-classification")
    with pytest.raises(RecipeError) as caught:
        evaluate(model, [hf], {"mrpc": (config, load_batches(config, tiny_classifier))}, "CPUExecutionProvider", None)
    assert "huggingface_metrics 'matthews_correlation': evaluate cannot load" in caught.value.message
    assert "evaluate.load('matthews_correlation')" in caught.value.fix


def test_huggingface_metrics_is_for_accuracy_metrics(tiny_classifier, tmp_path):
    latency = {"name": "latency", "type": "latency", "backend": "huggingface_metrics", "sub_types": [{"name": "avg"}]}
    with pytest.raises(RecipeError, match="accuracy"):
        load_recipe(_recipe(tmp_path, tiny_classifier, [latency], data_configs=[]))


def test_a_data_config_without_pre_processing_tokenizes_and_names_the_columns(offline, tiny_bert, tmp_path):
    from olive_systems.data import load_batches

    latency = {"name": "latency", "type": "latency", "data_config": "mrpc", "sub_types": [{"name": "avg"}]}
    config = load_recipe(_recipe(tmp_path, tiny_bert, [latency], data_configs=[
        {"name": "mrpc", "load_dataset_config": MRPC["load_dataset_config"]}]))["data_configs"]["mrpc"]
    assert config["pre_process_data_config"] == {"type": "tokenize"}
    with pytest.raises(RecipeError, match="input_cols is not set") as caught:
        load_batches(config, tiny_bert)
    assert "['sentence1', 'sentence2', 'label', 'idx']" in caught.value.fix


def test_an_accuracy_sub_type_olive_systems_lacks_is_refused_before_any_work(tiny_classifier, tmp_path):
    wrong = dict(ACCURACY, sub_types=[{"name": "perplexity"}])
    with pytest.raises(RecipeError, match="'perplexity' is not a sub-type of accuracy metrics"):
        load_recipe(_recipe(tmp_path, tiny_classifier, [wrong]))
    hf = dict(wrong, backend="huggingface_metrics")  # any evaluate metric name goes through evaluate
    assert load_recipe(_recipe(tmp_path, tiny_classifier, [hf]))["evaluators"]["common"]["metrics"][0]["backend"]
