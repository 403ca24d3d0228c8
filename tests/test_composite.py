"""A model of several components (Olive's hf_config.components): each exported to its own ONNX graph,
quantized per component, timed per component; bad component specs refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from olive_systems import run
from olive_systems.errors import RecipeError
from olive_systems.recipe import load_recipe

# One small torch model whose parts are the components: an encoder and a head over its states.
USER_SCRIPT = '''
import torch
from torch import nn


class EncoderHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 5)

    def forward(self, features):
        return self.head(self.encoder(features))


def load_model(model_path):
    model = EncoderHead()
    model.load_state_dict(torch.load(model_path))
    return model


def get_encoder(model):
    return model.load_model().encoder


def get_head(model):
    return model.load_model().head


def encoder_io_config(model):
    return {"input_names": ["features"], "output_names": ["states"],
            "dynamic_axes": {"features": {0: "batch", 1: "sequence"}, "states": {0: "batch", 1: "sequence"}}}


def encoder_dummy_inputs(model):
    return torch.randn(2, 7, 16)


def head_dummy_inputs(model):
    return {"input": torch.randn(2, 7, 64)}  # forward()'s keyword of nn.Linear
'''

HEAD_IO = {"input_names": ["states"], "output_names": ["logits"],
           "dynamic_axes": {"states": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}}
COMPONENTS = [
    {"name": "encoder", "component_func": "get_encoder", "io_config": "encoder_io_config",
     "dummy_inputs_func": "encoder_dummy_inputs"},
    {"name": "head", "component_func": "get_head", "io_config": HEAD_IO, "dummy_inputs_func": "head_dummy_inputs"},
]
LATENCY = {"name": "latency", "type": "latency", "sub_types": [{"name": "avg", "priority": 1}, {"name": "p90"}],
           "metric_config": {"warmup_num": 1, "repeat_test_num": 5, "budget_s": 1}}
SIZE = {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "mb"}]}


def _module(folder: Path):
    import torch

    namespace: dict = {}
    exec(USER_SCRIPT, namespace)
    model = namespace["EncoderHead"]().eval()
    model.load_state_dict(torch.load(folder / "weights.pt"))
    return model


def _recipe(folder: Path, **changes) -> dict:
    import torch

    (folder / "user_script.py").write_text(USER_SCRIPT)
    if not (folder / "weights.pt").is_file():
        namespace: dict = {}
        exec(USER_SCRIPT, namespace)
        torch.manual_seed(0)
        torch.save(namespace["EncoderHead"]().state_dict(), folder / "weights.pt")
    recipe = {
        "input_model": {"type": "PyTorchModel", "model_path": str(folder / "weights.pt"),
                        "model_script": str(folder / "user_script.py"), "model_loader": "load_model",
                        "components": COMPONENTS},
        "evaluators": {"e": {"metrics": [LATENCY, SIZE]}},
        "passes": {"convert": {"type": "OnnxConversion", "config": {"target_opset": 17}},
                   "dynamic": {"type": "OnnxDynamicQuantization"}},
        "pass_flows": [["convert"], ["convert", "dynamic"]],
        "engine": {"cache_dir": str(folder / "cache"), "output_dir": str(folder / "out")},
    }
    recipe.update(changes)
    return recipe


def _outputs(model_folder: Path, name: str, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_folder / name / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_components_export_quantize_and_evaluate(tmp_path):
    import onnx
    import torch

    output = run(_recipe(tmp_path))

    assert not output.failures, output.failures
    models = {m.model_id: m for m in output.get_output_models()}
    assert set(models) == {"convert", "convert-dynamic"}
    fp32, int8 = Path(models["convert"].model_path), Path(models["convert-dynamic"].model_path)
    for folder in (fp32, int8):
        manifest = json.loads((folder / "components.json").read_text())
        assert [c["name"] for c in manifest["components"]] == ["encoder", "head"]
        assert (folder / "encoder" / "model.onnx").is_file() and (folder / "head" / "model.onnx").is_file()
    for name in ("encoder", "head"):
        ops = {node.op_type for node in onnx.load(str(int8 / name / "model.onnx")).graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}, (name, ops)

    # each fp32 component computes what its torch module computes (at other shapes too); quantized is close
    module = _module(tmp_path)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(3, 5, 16)).astype(np.float32)
    with torch.no_grad():
        states = module.encoder(torch.from_numpy(features)).numpy()
        logits = module.head(torch.from_numpy(states)).numpy()
    np.testing.assert_allclose(_outputs(fp32, "encoder", {"features": features}), states, atol=1e-5)
    np.testing.assert_allclose(_outputs(fp32, "head", {"states": states}), logits, atol=1e-5)
    for name, feed, expected in (("encoder", {"features": features}, states), ("head", {"states": states}, logits)):
        quantized = _outputs(int8, name, feed)
        assert not np.array_equal(quantized, expected)  # it did change the arithmetic
        np.testing.assert_allclose(quantized, expected, atol=0.05 * np.abs(expected).max())

    # latency: per component and summed; size: both graphs, smaller once quantized
    for model in (models["convert"], models["convert-dynamic"]):
        latency = model.metrics["latency-avg"]
        assert set(latency["by_component"]) == {"encoder", "head"}
        assert latency["value"] == pytest.approx(sum(latency["by_component"].values()), abs=1e-3)
        assert all(value > 0 for value in latency["by_component"].values())
    onnx_bytes = {key: sum(p.stat().st_size for p in Path(m.model_path).rglob("*.onnx")) for key, m in models.items()}
    for key, model in models.items():
        assert model.metrics_value["size-mb"] == pytest.approx(onnx_bytes[key] / 2**20, abs=1e-3)
    assert models["convert-dynamic"].metrics_value["size-mb"] < models["convert"].metrics_value["size-mb"]
    # the input model (torch) is timed per component too
    assert set(output.get_input_model_metrics()["latency-avg"]["by_component"]) == {"encoder", "head"}


def _error(recipe: dict) -> str:
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    return str(caught.value)


def test_missing_component_function_names_the_script_functions(tmp_path):
    components = [dict(COMPONENTS[0], component_func="get_decoder"), COMPONENTS[1]]
    recipe = _recipe(tmp_path)
    recipe["input_model"]["components"] = components
    message = _error(recipe)
    assert "components[0].component_func" in message and "'get_decoder'" in message
    assert "get_encoder" in message and "get_head" in message  # what the script does define


def test_component_names_must_be_unique(tmp_path):
    recipe = _recipe(tmp_path)
    recipe["input_model"]["components"] = [COMPONENTS[0], dict(COMPONENTS[1], name="encoder")]
    assert "'encoder' is used more than once" in _error(recipe)


def test_component_missing_a_key_is_a_schema_error(tmp_path):
    recipe = _recipe(tmp_path)
    recipe["input_model"]["components"] = [{k: v for k, v in COMPONENTS[0].items() if k != "dummy_inputs_func"}]
    assert "dummy_inputs_func" in _error(recipe)


def test_metric_a_composite_cannot_compute_is_refused(tmp_path):
    accuracy = {"name": "acc", "type": "accuracy", "data_config": "d", "sub_types": [{"name": "accuracy_score"}]}
    recipe = _recipe(tmp_path, evaluators={"e": {"metrics": [accuracy]}},
                     data_configs=[{"name": "d", "type": "DummyDataContainer",
                                    "load_dataset_config": {"input_names": ["features"], "input_shapes": [[1, 16]]}}])
    message = _error(recipe)
    assert "acc" in message and "latency and size_on_disk only" in message


def test_pass_a_composite_cannot_take_is_refused(tmp_path):
    recipe = _recipe(tmp_path)
    recipe["passes"]["split"] = {"type": "SplitModel", "config": {"num_splits": 2}}
    recipe["pass_flows"] = [["convert", "split"]]
    message = _error(recipe)
    assert "passes.split (SplitModel) cannot run on a model of several components" in message
    assert "OnnxDynamicQuantization" in message


def test_olive_config_components_translate_to_the_native_key(tmp_path):
    """Olive's form (hf_config.components on a PyTorchModel) becomes input_model.components."""
    from olive_systems.olive_config import translate

    _recipe(tmp_path)
    olive = {
        "input_model": {"type": "PyTorchModel", "config": {
            "model_path": str(tmp_path / "weights.pt"), "model_script": str(tmp_path / "user_script.py"),
            "model_loader": "load_model", "hf_config": {"components": COMPONENTS}}},
        "passes": {"conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}}},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    }
    native = translate(olive, "olive.json")
    assert native["input_model"]["components"] == COMPONENTS
    assert native["input_model"]["type"] == "PyTorchModel"
    assert load_recipe(native)["input_model"]["components"] == COMPONENTS


# The seed's form: hf_config with components over a Hugging Face model (here the tiny BERT: its
# embeddings and its encoder stack as two components).
BERT_SCRIPT = '''
import torch


def get_embeddings(model):
    return model.load_model().embeddings


def get_encoder(model):
    return model.load_model().encoder


def embeddings_io_config(model):
    return {"input_names": ["input_ids"], "output_names": ["embedded"],
            "dynamic_axes": {"input_ids": {0: "batch", 1: "sequence"}, "embedded": {0: "batch", 1: "sequence"}}}


def encoder_io_config(model):
    return {"input_names": ["embedded"], "output_names": ["last_hidden_state"],
            "dynamic_axes": {"embedded": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"}}}


def embeddings_dummy_inputs(model):
    return {"input_ids": torch.randint(0, 100, (1, 12))}


def encoder_dummy_inputs(model):
    hidden = model.load_model().config.hidden_size
    return {"hidden_states": torch.randn(1, 12, hidden)}
'''


def test_olive_hf_config_components_run_unchanged(tmp_path, tiny_bert):
    import torch
    from transformers import BertModel

    from olive_systems.olive_config import translate

    (tmp_path / "user_script.py").write_text(BERT_SCRIPT)
    components = [{"name": name, "component_func": f"get_{name}", "io_config": f"{name}_io_config",
                   "dummy_inputs_func": f"{name}_dummy_inputs"} for name in ("embeddings", "encoder")]
    olive = {
        "input_model": {"type": "PyTorchModel", "config": {
            "model_script": str(tmp_path / "user_script.py"),
            "hf_config": {"model_name": str(tiny_bert), "task": "feature-extraction", "model_class": "BertModel",
                          "components": components}}},
        "evaluators": {"common": {"metrics": [LATENCY]}},
        "passes": {"conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}},
                   "quantization": {"type": "OnnxDynamicQuantization"}},
        "engine": {"evaluator": "common", "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    }
    native = translate(olive, "olive.json")
    assert native["input_model"]["type"] == "HfModel" and native["input_model"]["components"] == components
    output = run(native)

    assert not output.failures, output.failures
    best = output.get_best_candidate()
    folder = Path(best.model_path)
    assert set(best.metrics["latency-avg"]["by_component"]) == {"embeddings", "encoder"}
    # the quantized components chained give nearly what the whole torch model gives
    ids = np.random.default_rng(0).integers(0, 100, size=(2, 9))
    embedded = _outputs(folder, "embeddings", {"input_ids": ids})
    hidden = _outputs(folder, "encoder", {"embedded": embedded})
    with torch.no_grad():
        expected = BertModel.from_pretrained(tiny_bert).eval()(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(hidden, expected, atol=0.1)
