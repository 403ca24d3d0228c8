"""PyTorchModel: a plain torch module built by a user's script (a CNN and an MLP, no transformers)
exported, quantized (dynamic and static INT8) and evaluated end to end; bad scripts refused at validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from olive_systems import run
from olive_systems.errors import RecipeError
from olive_systems.recipe import load_recipe

NETS = '''
import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, features):
        return self.layers(features)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(32, 4)

    def forward(self, image):
        return self.head(self.conv(image).flatten(1))
'''

# The model script: it imports its nets from script_dir, as an Olive user's script would.
USER_SCRIPT = '''
import torch
from nets import TinyCNN, TinyMLP


def load_mlp(model_path):
    model = TinyMLP()
    model.load_state_dict(torch.load(model_path))
    return model


def load_cnn(model_path):
    model = TinyCNN()
    model.load_state_dict(torch.load(model_path))
    return model


def mlp_io_config(model):
    return {"input_names": ["features"], "output_names": ["logits"],
            "dynamic_axes": {"features": {0: "batch"}, "logits": {0: "batch"}}}


def mlp_dummy_inputs(model):
    return torch.randn(2, 8)
'''

# Data functions get the loaded dataset and return model-ready batches (the user-function contract).
DATA_SCRIPT = '''
import numpy as np
from olive_systems.data import Batches


def features(dataset, model_folder, batch_size, columns, shape, label_col="label"):
    values = np.stack([np.asarray(dataset[c], dtype=np.float32) for c in columns], axis=1).reshape([-1, *shape])
    inputs = [{"features" if len(shape) == 1 else "image": values[i:i + batch_size]}
              for i in range(0, len(values), batch_size)]
    return Batches(inputs=inputs, targets=np.asarray(dataset[label_col]))
'''

MODELS = {  # name -> (class, loader, number of input columns, input shape)
    "mlp": ("TinyMLP", "load_mlp", 8, [8]),
    "cnn": ("TinyCNN", "load_cnn", 64, [1, 8, 8]),
}


def _write_project(folder: Path, kind: str) -> dict:
    """Script folder, weights and a CSV whose labels are the float model's own predictions (so the
    input model scores 1.0 and a candidate's accuracy says how far quantization moved it)."""
    import torch

    code = folder / "code"
    code.mkdir(parents=True)
    (code / "nets.py").write_text(NETS)
    (code / "user_script.py").write_text(USER_SCRIPT)
    (folder / "data_script.py").write_text(DATA_SCRIPT)
    namespace: dict = {}
    exec(NETS, namespace)
    class_name, loader, width, shape = MODELS[kind]
    torch.manual_seed(0)
    model = namespace[class_name]().eval()
    torch.save(model.state_dict(), folder / f"{kind}.pt")
    rows = np.random.default_rng(0).normal(size=(64, width)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(rows.reshape([-1, *shape]))).argmax(-1).numpy()
    columns = [f"x{i}" for i in range(width)]
    with open(folder / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "label"])
        writer.writerows([*map(float, row), int(label)] for row, label in zip(rows, labels))
    return {"loader": loader, "columns": columns, "shape": shape}


def _recipe(folder: Path, kind: str, project: dict, **input_model) -> dict:
    data = {"load_dataset_config": {"data_name": "csv", "data_files": str(folder / "data.csv")},
            "user_script": str(folder / "data_script.py"),
            "pre_process_data_config": {"type": "features", "columns": project["columns"], "shape": project["shape"]},
            "post_process_data_config": {"type": "argmax"}, "dataloader_config": {"batch_size": 16}}
    return {
        "input_model": {"type": "PyTorchModel", "model_path": str(folder / f"{kind}.pt"),
                        "model_script": str(folder / "code" / "user_script.py"), "script_dir": str(folder / "code"),
                        "model_loader": project["loader"], **input_model},
        "data_configs": [{"name": "eval", **data}, {"name": "calibration", **data}],
        "evaluators": {"e": {"metrics": [
            {"name": "accuracy", "type": "accuracy", "data_config": "eval",
             "sub_types": [{"name": "accuracy_score", "priority": 1}]},
            {"name": "latency", "type": "latency", "sub_types": [{"name": "avg", "priority": 2}],
             "metric_config": {"warmup_num": 1, "repeat_test_num": 3}},
        ]}},
        "passes": {"convert": {"type": "OnnxConversion", "config": {"target_opset": 17}},
                   "dynamic": {"type": "OnnxDynamicQuantization"},
                   "static": {"type": "OnnxStaticQuantization", "config": {"data_config": "calibration"}}},
        "pass_flows": [["convert"], ["convert", "dynamic"], ["convert", "static"]],
        "engine": {"cache_dir": str(folder / "cache"), "output_dir": str(folder / "out")},
    }


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_script_model_exports_quantizes_and_evaluates(tmp_path, kind):
    import onnx

    project = _write_project(tmp_path, kind)
    if kind == "mlp":  # io_config and dummy inputs from functions of the script
        extra = {"io_config": "mlp_io_config", "dummy_inputs_func": "mlp_dummy_inputs"}
    else:  # io_config as a dict: its input_shapes make the example input
        extra = {"io_config": {"input_names": ["image"], "output_names": ["logits"], "input_shapes": [[1, 1, 8, 8]],
                               "dynamic_axes": {"image": {0: "batch"}, "logits": {0: "batch"}}}}
    output = run(_recipe(tmp_path, kind, project, **extra))

    assert not output.failures, output.failures
    assert output.get_input_model_metrics()["accuracy-accuracy_score"]["value"] == 1.0  # labels are its own predictions
    models = {m.model_id: m for m in output.get_output_models()}
    assert set(models) == {"convert", "convert-dynamic", "convert-static"}
    assert models["convert"].metrics_value["accuracy-accuracy_score"] == 1.0
    for model_id, model in models.items():
        assert model.metrics_value["latency-avg"] > 0
        assert model.metrics_value["accuracy-accuracy_score"] >= 0.8, model_id
        proto = onnx.load(model.model_path)
        name = "features" if kind == "mlp" else "image"
        assert [i.name for i in proto.graph.input] == [name]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch kept
        ops = {node.op_type for node in proto.graph.node}
        if model_id == "convert-dynamic":
            assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "ConvInteger"}, ops
        if model_id == "convert-static":
            assert "QuantizeLinear" in ops, ops
        assert not (Path(model.model_path).parent / "user_script.py").exists()  # the script stays with the input


def test_script_model_export_matches_torch(tmp_path):
    """The exported ONNX model computes what the module computes, at another batch size too."""
    import onnxruntime as ort
    import torch

    project = _write_project(tmp_path, "cnn")
    recipe = _recipe(tmp_path, "cnn", project, io_config={
        "input_names": ["image"], "output_names": ["logits"], "input_shapes": [[1, 1, 8, 8]],
        "dynamic_axes": {"image": {0: "batch"}}})
    recipe.update(evaluators={}, pass_flows=[["convert"]])
    output = run(recipe)
    namespace: dict = {}
    exec(NETS, namespace)
    module = namespace["TinyCNN"]().eval()
    module.load_state_dict(torch.load(tmp_path / "cnn.pt"))
    image = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(output.get_best_candidate().model_path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(session.run(None, {"image": image})[0], expected, atol=1e-5)


def test_changed_script_is_a_new_model(tmp_path):
    """The script is part of the model's identity: editing it re-runs the export, not a cache hit."""
    project = _write_project(tmp_path, "mlp")
    recipe = _recipe(tmp_path, "mlp", project, io_config="mlp_io_config", dummy_inputs_func="mlp_dummy_inputs")
    recipe.update(evaluators={}, pass_flows=[["convert"]])
    first = run(recipe)
    assert first.steps[0]["cached"] is False
    assert run(dict(recipe, engine={**recipe["engine"], "output_dir": str(tmp_path / "out2")})).steps[0]["cached"] is True
    script = tmp_path / "code" / "user_script.py"
    script.write_text(script.read_text() + "\n# edited\n")
    third = run(dict(recipe, engine={**recipe["engine"], "output_dir": str(tmp_path / "out3")}))
    assert third.steps[0]["cached"] is False


# ---- bad input: one line, before any work ----

def _error(recipe: dict) -> RecipeError:
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    return caught.value


def test_loader_not_found_names_the_functions_the_script_has(tmp_path):
    project = _write_project(tmp_path, "mlp")
    error = _error(_recipe(tmp_path, "mlp", project, model_loader="load_model", io_config="mlp_io_config"))
    assert "model_loader: 'load_model' is not a function in user_script.py" in error.message
    assert "it defines load_cnn, load_mlp, mlp_dummy_inputs, mlp_io_config" in error.message  # not the imported nets
    assert "\n" not in error.message


def test_io_config_function_missing(tmp_path):
    project = _write_project(tmp_path, "mlp")
    error = _error(_recipe(tmp_path, "mlp", project, io_config="get_io_config"))
    assert "io_config: 'get_io_config' is not a function in user_script.py" in error.message


def test_script_missing(tmp_path):
    project = _write_project(tmp_path, "mlp")
    recipe = _recipe(tmp_path, "mlp", project, io_config="mlp_io_config")
    recipe["input_model"]["model_script"] = str(tmp_path / "code" / "missing.py")
    error = _error(recipe)
    assert "input_model.model_script" in error.message and "missing.py' does not exist" in error.message


def test_script_that_fails_to_import(tmp_path):
    project = _write_project(tmp_path, "mlp")
    recipe = _recipe(tmp_path, "mlp", project, io_config="mlp_io_config")
    del recipe["input_model"]["script_dir"]  # its sibling module is in no folder on sys.path
    (tmp_path / "elsewhere").mkdir()
    script = tmp_path / "elsewhere" / "user_script.py"
    script.write_text(USER_SCRIPT.replace("from nets import", "from h3_nets_not_here import"))
    recipe["input_model"]["model_script"] = str(script)
    error = _error(recipe)
    assert "fails to import: ModuleNotFoundError: No module named 'h3_nets_not_here'" in error.message


def test_io_config_without_shapes_or_dummy_inputs(tmp_path):
    project = _write_project(tmp_path, "mlp")
    error = _error(_recipe(tmp_path, "mlp", project, io_config={"input_names": ["features"], "output_names": ["logits"]}))
    assert "no input_shapes and there is no dummy_inputs_func" in error.message


def test_missing_io_config_and_loader(tmp_path):
    project = _write_project(tmp_path, "mlp")
    assert "needs io_config" in _error(_recipe(tmp_path, "mlp", project)).message
    recipe = _recipe(tmp_path, "mlp", project, io_config="mlp_io_config")
    del recipe["input_model"]["model_loader"], recipe["input_model"]["model_path"]
    assert "needs model_loader" in _error(recipe).message


def test_hf_folder_without_config_json_is_one_line(tmp_path):
    folder = tmp_path / "not_hf"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"")
    for extra in ({}, {"model_script": str(tmp_path / "s.py"), "io_config": {"input_names": ["x"], "output_names": ["y"]}}):
        (tmp_path / "s.py").write_text("")
        error = _error({"input_model": {"type": "HfModel", "model_path": str(folder), **extra},
                        "passes": {"c": {"type": "OnnxConversion"}}})
        assert error.message.endswith("has no config.json: it is not a Hugging Face model folder")
        assert "PyTorchModel" in error.fix


def test_recipe_schema_knows_pytorch_model():
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "recipe.schema.json").read_text())
    input_model = schema["properties"]["input_model"]
    assert "PyTorchModel" in input_model["properties"]["type"]["enum"]
    assert {"model_loader", "script_dir"} <= set(input_model["properties"])


def test_torchscript_file_without_loader(tmp_path):
    """No model_loader: model_path is a TorchScript (torch.jit.save) file; evaluation runs it in torch."""
    import torch

    project = _write_project(tmp_path, "mlp")
    namespace: dict = {}
    exec(NETS, namespace)
    module = namespace["TinyMLP"]().eval()
    module.load_state_dict(torch.load(tmp_path / "mlp.pt"))
    torch.jit.save(torch.jit.trace(module, torch.zeros(1, 8)), tmp_path / "mlp_scripted.pt")
    recipe = _recipe(tmp_path, "mlp", project, io_config={"input_names": ["features"], "output_names": ["logits"],
                                                           "input_shapes": [[1, 8]], "dynamic_axes": {"features": {0: "b"}}})
    recipe["input_model"] = {"type": "PyTorchModel", "model_path": str(tmp_path / "mlp_scripted.pt"),
                             "io_config": recipe["input_model"]["io_config"]}
    recipe["pass_flows"] = [["convert"]]
    output = run(recipe)
    assert not output.failures, output.failures
    assert output.get_input_model_metrics()["accuracy-accuracy_score"]["value"] == 1.0
    assert output.get_best_candidate().metrics_value["accuracy-accuracy_score"] == 1.0


def test_cli_validate_names_the_loader_problem_in_one_line(tmp_path, capsys):
    import yaml

    from olive_systems.cli import main

    project = _write_project(tmp_path, "mlp")
    recipe = _recipe(tmp_path, "mlp", project, model_loader="load_model", io_config="mlp_io_config")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["validate", "--config", str(tmp_path / "recipe.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: recipe.yaml: input_model.model_loader: 'load_model'")
    assert err[1].startswith("fix: name one of those")


def test_capture_onnx_graph_of_a_model_script(tmp_path):
    """The command line's model_script convention (Olive's): _model_loader, _io_config, _dummy_inputs."""
    import onnx

    from olive_systems.cli import main

    project = _write_project(tmp_path, "cnn")
    script = tmp_path / "code" / "cli_script.py"
    script.write_text(USER_SCRIPT + "\n\ndef _model_loader(path):\n    return load_cnn(path)\n\n\n"
                      "def _io_config(model):\n    return {'input_names': ['image'], 'output_names': ['logits'], "
                      "'dynamic_axes': {'image': {0: 'batch'}}, 'input_shapes': [[1, 1, 8, 8]]}\n")
    assert project["loader"] == "load_cnn"
    code = main(["capture-onnx-graph", "--model_name_or_path", str(tmp_path / "cnn.pt"), "--model_script", str(script),
                 "--script_dir", str(tmp_path / "code"), "--output_path", str(tmp_path / "out"),
                 "--cache_dir", str(tmp_path / "cache")])
    assert code == 0
    proto = onnx.load(str(tmp_path / "out" / "conversion" / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    with pytest.raises(RecipeError, match="defines no _io_config"):
        from olive_systems import capture_onnx_graph

        capture_onnx_graph(str(tmp_path / "cnn.pt"), model_script=str(tmp_path / "code" / "user_script.py"),
                           script_dir=str(tmp_path / "code"), output_path=str(tmp_path / "o2"))
