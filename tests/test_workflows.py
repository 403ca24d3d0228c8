"""The seed's workflow functions (capture_onnx_graph, quantize, auto_opt): each builds a recipe and runs
it through the one engine; their command-line subcommands are generated from their signatures."""

import argparse
import inspect
import json
import logging
from pathlib import Path
from typing import Literal

import onnx
import pytest
import yaml

import olive_systems
from olive_systems.cli import main
from olive_systems.errors import PassError, RecipeError
from olive_systems.passes import pass_types
from olive_systems.recipe import load_recipe
from olive_systems.workflows import WORKFLOWS, build_recipe
from olive_systems.workflows.arguments import add_function_arguments, docstring_args

from conftest import DATA

CALIBRATION = str(DATA / "calibration_sentences.csv")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder, and one cache, for the module: the export is computed once and reused."""
    return tmp_path_factory.mktemp("workflows")


def op_types(model_path) -> set[str]:
    return {node.op_type for node in onnx.load(str(model_path), load_external_data=False).graph.node}


def ids(output) -> list[str]:
    return [model.model_id for model in output.get_output_models()]


# ---- the public API ----

def test_the_functions_are_public_and_listed():
    for name in ("capture_onnx_graph", "quantize", "auto_opt", "run", "WorkflowOutput"):
        assert name in dir(olive_systems) and name in olive_systems.__all__
    assert olive_systems.quantize is WORKFLOWS["quantize"]
    for func in WORKFLOWS.values():  # the seed's argument names and defaults
        parameters = inspect.signature(func).parameters
        assert list(parameters)[0] == "model_name_or_path"
        assert parameters["task"].default == "text-generation-with-past"
        assert parameters["log_level"].default == 3 and parameters["save_config_file"].default is False


def test_every_parameter_is_documented():
    for name, func in WORKFLOWS.items():
        documented = docstring_args(func)
        missing = [p for p in inspect.signature(func).parameters if not documented.get(p)]
        assert not missing, f"{name}: no help text for {missing}"


# ---- end to end on the tiny BERT ----

def test_capture_onnx_graph_gives_a_loadable_model_and_a_recipe_that_runs_again(tiny_bert, work):
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out = work / "captured"
    output = olive_systems.capture_onnx_graph(str(tiny_bert), task="feature-extraction", output_path=str(out),
                                              cache_dir=str(work / "cache"), save_config_file=True)
    assert ids(output) == ["conversion"] and not output.failures
    best = output.get_best_candidate()
    assert best.from_pass() == "OnnxConversion"
    folder = Path(best.model_path).parent
    session = ort.InferenceSession(best.model_path, providers=["CPUExecutionProvider"])
    feed = dict(AutoTokenizer.from_pretrained(folder)(["a short sentence"], return_tensors="np"))
    hidden = session.run(None, {i.name: feed[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    assert hidden.shape[:2] == feed["input_ids"].shape and hidden.shape[2] == 32

    saved = out / "capture_onnx_graph_config.yaml"
    recipe = load_recipe(saved)  # the schema accepts it as written
    assert recipe["passes"]["conversion"]["type"] == "OnnxConversion"
    assert recipe["engine"]["output_dir"] == str(out.resolve())
    again = olive_systems.run(str(saved))  # replaces the output folder, the recipe file kept in it
    assert ids(again) == ids(output) and all(step["cached"] for step in again.steps)
    assert saved.is_file()


def test_quantize_without_data_is_dynamic_int8(tiny_bert, work):
    output = olive_systems.quantize(str(tiny_bert), task="feature-extraction", output_path=str(work / "dynamic"),
                                    cache_dir=str(work / "cache"))
    assert ids(output) == ["conversion-dynamic_int8"]
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= op_types(output.get_best_candidate().model_path)


def test_quantize_with_data_and_qdq_is_static(tiny_bert, work):
    output = olive_systems.quantize(str(tiny_bert), task="feature-extraction", output_path=str(work / "static"),
                                    cache_dir=str(work / "cache"), data_name="csv", data_files=CALIBRATION,
                                    input_cols=["text"], max_seq_len=32, max_samples=8, batch_size=4,
                                    use_qdq_encoding=True, act_precision="uint8")
    assert ids(output) == ["conversion-static_int8"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(output.get_best_candidate().model_path)


def test_quantize_int4_is_weight_only(tiny_bert, work):
    if "OnnxWeightOnlyQuantization" not in pass_types():
        pytest.skip("OnnxWeightOnlyQuantization is not registered")
    output = olive_systems.quantize(str(tiny_bert), task="feature-extraction", algorithm="rtn", precision="int4",
                                    output_path=str(work / "int4"), cache_dir=str(work / "cache"))
    assert ids(output) == ["conversion-rtn_int4"]
    assert "MatMulNBits" in op_types(output.get_best_candidate().model_path)


def test_auto_opt_searches_ranks_fixes_shapes_and_its_recipe_runs_again(tiny_bert, work):
    out = work / "auto"
    output = olive_systems.auto_opt(
        str(tiny_bert), task="feature-extraction", precision="int8", enable_search="sequential",
        dynamic_to_fixed_shape_dim_param=["batch_size", "sequence_length"], dynamic_to_fixed_shape_dim_value=[1, 128],
        output_path=str(out), cache_dir=str(work / "cache"), save_config_file=True)
    models = output.get_output_models()
    assert not output.failures
    assert len(models) == 4  # per_channel x reduce_range
    assert [m.rank for m in models] == [1, 2, 3, 4]
    assert [entry["model_id"] for entry in json.loads((out / "models_rank.json").read_text())] == ids(output)
    assert all(m.model_id.startswith("conversion-fixed_shape-fusion-dynamic_int8") for m in models)
    assert all("latency-avg" in m.metrics for m in models) and output.get_input_model_metrics()
    graph = onnx.load(models[0].model_path, load_external_data=False).graph
    assert all([d.dim_value for d in i.type.tensor_type.shape.dim] == [1, 128] for i in graph.input)
    assert {"MatMulInteger", "SkipLayerNormalization"} <= op_types(models[0].model_path)

    saved = out / "auto_opt_config.yaml"
    assert yaml.safe_load(saved.read_text())["engine"]["search_strategy"]["search_algorithm"] == "sequential"
    load_recipe(saved)
    assert main(["run", "--config", str(saved)]) == 0
    rerun = olive_systems.WorkflowOutput.load(out)
    assert sorted(ids(rerun)) == sorted(ids(output)) and saved.is_file()


# ---- the command line ----

def test_cli_subcommands_run(tiny_bert, work, capsys):
    out = work / "cli_quantize"
    code = main(["quantize", "--model_name_or_path", str(tiny_bert), "--task", "feature-extraction",
                 "--algorithm", "rtn", "--precision", "uint8", "--output_path", str(out),
                 "--cache_dir", str(work / "cache"), "--save_config_file"])
    assert code == 0
    assert [e["model_id"] for e in json.loads((out / "models_rank.json").read_text())] == ["conversion-dynamic_uint8"]
    assert (out / "quantize_config.yaml").is_file() and "quantize_config.yaml" in capsys.readouterr().out
    # the dashed spellings work too
    code = main(["capture-onnx-graph", "--model-name-or-path", str(tiny_bert), "--task", "feature-extraction",
                 "--output-path", str(work / "cli_capture"), "--cache-dir", str(work / "cache")])
    assert code == 0 and (work / "cli_capture" / "conversion" / "model.onnx").is_file()


@pytest.mark.parametrize("command", list(WORKFLOWS))
def test_cli_help_lists_every_argument(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    func = WORKFLOWS[command]
    for name in inspect.signature(func).parameters:
        assert f"--{name}" in text
    assert " ".join(docstring_args(func)["save_config_file"].split()) in text


def test_cli_refuses_with_exit_code_2(tiny_bert, tmp_path, capsys):
    code = main(["auto_opt", "--model_name_or_path", str(tiny_bert), "--num_splits", "2", "--cost_model", "c.csv",
                 "--output_path", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "num_splits" in err and "fix:" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_arguments_are_generated_from_the_signature():
    def command(path: str, *, flag: bool = False, on: bool = True, maybe: bool | None = None, sizes: list[int] | None = None,
                mode: Literal["a", "b"] = "a", level: Literal[0, 1, 2] = 1, files: str | list[str] | None = None,
                ratio: float = 0.5):
        """A command.

        Args:
            path: Where.
            flag: A flag
                on two lines.
            on: On by default.
            maybe: Three states.
            sizes: Some sizes.
            mode: A mode.
            level: A level.
            files: Files.
            ratio: A ratio.
        """

    parser = argparse.ArgumentParser()
    add_function_arguments(parser, command)
    args = parser.parse_args(["--path", "p", "--flag", "--no-on", "--sizes", "1", "2", "--mode", "b", "--level", "2",
                              "--files", "x.csv,y.csv", "--ratio", "0.25"])
    assert vars(args) == {"path": "p", "flag": True, "on": False, "maybe": None, "sizes": [1, 2], "mode": "b",
                          "level": 2, "files": "x.csv,y.csv", "ratio": 0.25}
    assert parser.parse_args(["--path", "p", "--maybe"]).maybe is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--path", "p", "--mode", "c"])  # not a choice
    with pytest.raises(SystemExit):
        parser.parse_args([])  # path is required
    assert docstring_args(command)["flag"] == "A flag on two lines."


# ---- refusals: before any work ----

REFUSED = [
    ("quantize", {"algorithm": "spinquant"}, "spinquant"),
    ("quantize", {"algorithm": "quarot"}, "quarot"),
    ("quantize", {"algorithm": "awq", "precision": "int4"}, "awq"),
    ("quantize", {"precision": "fp8"}, "fp8"),
    ("quantize", {"precision": "nf4"}, "nf4"),
    ("quantize", {"algorithm": "hqq", "precision": "int8"}, "hqq"),
    ("quantize", {"algorithm": "gptq", "precision": "int4"}, "gptq"),  # no data
    ("quantize", {"use_qdq_encoding": True}, "use_qdq_encoding"),  # no data: not static
    ("quantize", {"implementation": "bnb"}, "implementation"),
    ("quantize", {"text_field": "text"}, "text_field"),  # a dataset argument without a dataset
    ("quantize", {"adapter_path": "adapters/"}, "adapter_path"),
    ("quantize", {"account_name": "storage"}, "account_name"),  # a shared cache needs its container
    ("auto_opt", {"num_splits": 2, "cost_model": "cost.csv"}, "num_splits"),  # two ways to split
    ("auto_opt", {"cost_model": "cost.csv"}, "cost_model"),
    ("auto_opt", {"memory": 2**30}, "memory"),
    ("auto_opt", {"precision": "fp8"}, "fp8"),
    ("auto_opt", {"seed": 1}, "seed"),
    ("auto_opt", {"mixed_precision_overrides_config": ["a", "int8"]}, "mixed_precision_overrides_config"),
    ("auto_opt", {"dynamic_to_fixed_shape_dim_param": ["batch_size"], "dynamic_to_fixed_shape_dim_value": [1, 2]},
     "dim_param"),
    ("auto_opt", {"task": "feature-extraction", "use_model_builder": True}, "use_model_builder"),
    ("auto_opt", {"precision": "fp32", "enable_search": "random"}, "enable_search"),  # a decoder export only
    ("auto_opt", {"provider": "cuda"}, "provider"),
    ("capture_onnx_graph", {"precision": "int4"}, "precision"),  # a Model Builder option without Model Builder
    ("capture_onnx_graph", {"use_model_builder": True, "target_opset": 18}, "target_opset"),
    ("capture_onnx_graph", {"conversion_device": "gpu"}, "conversion_device"),
    ("capture_onnx_graph", {"task": "feature-extraction", "use_ort_genai": True}, "use_ort_genai"),
    ("capture_onnx_graph", {"model_script": "model.py"}, "model_script"),
    ("capture_onnx_graph", {"log_level": 7}, "log_level"),
]


@pytest.mark.parametrize("command,arguments,named", REFUSED, ids=[f"{c}-{n}" for c, _, n in REFUSED])
def test_what_cannot_be_honoured_is_refused_before_any_work(command, arguments, named, tiny_bert, tmp_path):
    with pytest.raises(RecipeError) as error:
        WORKFLOWS[command](str(tiny_bert), output_path=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                           **arguments)
    assert named in error.value.message and error.value.fix
    assert list(tmp_path.iterdir()) == []  # no output folder, no cache: nothing ran


def test_log_level_sets_the_olive_systems_loggers(tiny_bert, tmp_path):
    logger = logging.getLogger("olive_systems")
    before = logger.level
    try:
        with pytest.raises(RecipeError):
            olive_systems.quantize(str(tiny_bert), algorithm="quarot", log_level=1, output_path=str(tmp_path / "o"))
        assert logger.level == logging.INFO
        with pytest.raises(RecipeError):
            olive_systems.quantize(str(tiny_bert), algorithm="quarot", log_level=4, output_path=str(tmp_path / "o"))
        assert logger.level == logging.CRITICAL
    finally:
        logger.setLevel(before)


# ---- the recipes the functions build ----

QUANTIZE_CHOICES = [
    ({}, "OnnxDynamicQuantization", {"weight_type": "QInt8"}),
    ({"precision": "uint8"}, "OnnxDynamicQuantization", {"weight_type": "QUInt8"}),
    ({"data_name": "csv", "data_files": CALIBRATION}, "OnnxStaticQuantization",
     {"quant_format": "QOperator", "activation_type": "QInt8", "data_config": "calibration"}),
    ({"precision": "int4"}, "OnnxWeightOnlyQuantization", {"algorithm": "rtn", "bits": 4, "is_symmetric": True}),
    ({"precision": "uint4"}, "OnnxWeightOnlyQuantization", {"algorithm": "rtn", "bits": 4, "is_symmetric": False}),
    ({"algorithm": "hqq", "precision": "int4"}, "OnnxWeightOnlyQuantization", {"algorithm": "hqq", "bits": 4}),
    ({"algorithm": "gptq", "precision": "int4", "data_name": "csv", "data_files": CALIBRATION, "text_field": "text"},
     "OnnxWeightOnlyQuantization", {"algorithm": "gptq", "bits": 4, "data_config": "calibration"}),
]


@pytest.mark.parametrize("arguments,pass_type,config", QUANTIZE_CHOICES)
def test_quantize_chooses_the_pass(arguments, pass_type, config, tiny_bert, tmp_path):
    recipe = build_recipe("quantize", model_name_or_path=str(tiny_bert), output_path=str(tmp_path / "o"), **arguments)
    assert [entry["type"] for entry in recipe["passes"].values()] == ["OnnxConversion", pass_type]
    assert list(recipe["passes"].values())[1]["config"].items() >= config.items()
    if pass_type in pass_types():
        load_recipe(recipe)
    if "data_name" in arguments:  # a decoder task pre-processes text for generation
        assert recipe["data_configs"][0]["pre_process_data_config"]["type"] == "text_generation"


def test_auto_opt_chooses_passes_from_task_device_and_precision(tiny_bert, tmp_path):
    def flow(**arguments):
        recipe = build_recipe("auto_opt", model_name_or_path=str(tiny_bert), output_path=str(tmp_path / "o"), **arguments)
        return [recipe["passes"][name]["type"] for name in recipe["pass_flows"][0]], recipe

    types, recipe = flow(precision="int4")  # a decoder task (the default)
    assert types == ["OnnxConversion", "OnnxWeightOnlyQuantization"]
    from olive_systems.evaluation.metrics import METRIC_TYPES

    timing = "generation" if "generation" in METRIC_TYPES else "latency"
    assert [m["type"] for m in recipe["evaluators"]["auto"]["metrics"]] == [timing]
    assert flow(precision="int8")[0] == ["OnnxConversion", "OnnxWeightOnlyQuantization"]
    assert flow(use_model_builder=True, precision="int4")[0] == ["ModelBuilder"]
    types, recipe = flow(device="gpu", provider="CUDAExecutionProvider")  # fp16 on gpu by default
    assert types == ["OnnxConversion", "OnnxFloatToFloat16"]
    assert recipe["systems"]["local_system"]["accelerators"] == [{"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}]
    types, recipe = flow(task="feature-extraction", precision="int8", use_qdq_encoding=True, data_name="csv",
                         data_files=CALIBRATION)
    assert types == ["OnnxConversion", "OrtTransformersOptimization", "OnnxStaticQuantization"]
    assert [m["type"] for m in recipe["evaluators"]["auto"]["metrics"]] == ["fidelity", "latency"]
    assert recipe["data_configs"][0]["pre_process_data_config"] == {"type": "tokenize", "input_cols": ["text"]}
    types, recipe = flow(task="feature-extraction", enable_search="tpe", seed=7, precision="fp16")
    assert types == ["OnnxConversion", "OrtTransformersOptimization", "OnnxFloatToFloat16"]
    assert recipe["passes"]["fp16"]["config"]["keep_io_types"] == {"choices": [True, False]}
    assert recipe["engine"]["search_strategy"]["search_algorithm_config"] == {"seed": 7}


def test_input_model_kinds(dynamic_model, tmp_path):
    onnx_folder = dynamic_model
    for given in (onnx_folder, onnx_folder / "model.onnx"):
        recipe = build_recipe("quantize", model_name_or_path=str(given), task="feature-extraction",
                              output_path=str(tmp_path / "o"))
        assert recipe["input_model"] == {"type": "OnnxModel", "model_path": str(onnx_folder.resolve()),
                                         "task": "feature-extraction"}
        assert list(recipe["passes"]) == ["dynamic_int8"]  # no export of an ONNX model
    with pytest.raises(RecipeError, match="already an ONNX model"):
        build_recipe("capture_onnx_graph", model_name_or_path=str(onnx_folder), output_path=str(tmp_path / "o"))
    gguf = tmp_path / "m" / "model.Q4_K_M.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    recipe = build_recipe("capture_onnx_graph", model_name_or_path=str(gguf), output_path=str(tmp_path / "o"))
    assert recipe["input_model"] == {"type": "HfModel", "model_path": str(gguf.parent.resolve()),
                                     "gguf_file": gguf.name, "task": "text-generation-with-past"}
    with pytest.raises(RecipeError, match="nobody/no-such-model"):  # offline, not cached
        build_recipe("quantize", model_name_or_path="nobody/no-such-model", output_path=str(tmp_path / "o"))


# ---- DynamicToFixedShape ----

@pytest.fixture
def dynamic_model(tmp_path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    folder = tmp_path / "dynamic"
    folder.mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "config.json").write_text("{}")
    return folder


def run_fixed_shape(folder: Path, out: Path, **config):
    from olive_systems.models import ModelRef
    from olive_systems.passes import get_pass_class
    from olive_systems.passes.base import Accelerator, PassContext

    cls = get_pass_class("DynamicToFixedShape")
    ctx = PassContext(Accelerator("cpu", "CPUExecutionProvider"), load_data=None, log=lambda message: None)
    return cls().run(ModelRef(type="OnnxModel", path=str(folder), hash=""), cls.resolve_config(config), out, ctx)


def shapes(folder: Path) -> dict:
    graph = onnx.load(str(folder / "model.onnx")).graph
    return {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}


def test_dynamic_to_fixed_shape(dynamic_model, tmp_path):
    import numpy as np
    import onnxruntime as ort

    fixed = run_fixed_shape(dynamic_model, tmp_path / "a", dim_param=["batch", "seq"], dim_value=[2, 8])
    assert shapes(Path(fixed.path)) == {"x": [2, 8, 4], "y": [2, 8, 4]}
    assert (Path(fixed.path) / "config.json").is_file() and fixed.attributes["fixed_shapes"] == {"batch": 2, "seq": 8}
    session = ort.InferenceSession(str(Path(fixed.path) / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((2, 8, 4), np.float32)})[0].shape == (2, 8, 4)
    by_input = run_fixed_shape(dynamic_model, tmp_path / "b", input_shapes={"x": [1, 3, 4]})
    assert shapes(Path(by_input.path))["x"] == [1, 3, 4]


def test_dynamic_to_fixed_shape_keeps_external_data(tmp_path):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], initializer=[weight])
    folder = tmp_path / "external"
    folder.mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    fixed = Path(run_fixed_shape(folder, tmp_path / "out", dim_param=["batch"], dim_value=[3]).path)
    assert (fixed / "model.onnx.data").is_file() and shapes(fixed)["x"] == [3, 4]
    session = ort.InferenceSession(str(fixed / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((3, 4), np.float32)})[0].tolist() == [[0, 1, 2, 3]] * 3


@pytest.mark.parametrize("config,named", [
    ({"dim_param": ["batch", "sequence_length"], "dim_value": [1, 8]}, "batch, seq"),  # names the ones there are
    ({"dim_param": ["batch"], "dim_value": [1, 2]}, "dim_value"),
    ({"input_shapes": {"input_ids": [1, 8]}}, "x"),
    ({"input_shapes": {"x": [1, 8]}}, "rank 3"),
    ({"input_shapes": {"x": [1, 8, 5]}}, "fixed at 4"),
    ({}, "nothing to fix"),
])
def test_dynamic_to_fixed_shape_refuses(config, named, dynamic_model, tmp_path):
    with pytest.raises(PassError) as error:
        run_fixed_shape(dynamic_model, tmp_path / "out", **config)
    assert named in error.value.message and error.value.fix


# ---- decoders (the KV-cache export) ----

def test_decoder_capture_and_int4_quantize(request, work):
    if "OnnxWeightOnlyQuantization" not in pass_types():
        pytest.skip("OnnxWeightOnlyQuantization is not registered")
    try:
        tiny_llama = request.getfixturevalue("tiny_llama")
    except pytest.FixtureLookupError:
        pytest.skip("no tiny_llama fixture")
    captured = olive_systems.capture_onnx_graph(str(tiny_llama), output_path=str(work / "llama"),
                                                cache_dir=str(work / "cache"))
    assert not captured.failures
    graph = onnx.load(captured.get_best_candidate().model_path, load_external_data=False).graph
    assert any(i.name.startswith("past_key_values") for i in graph.input)
    quantized = olive_systems.quantize(str(tiny_llama), algorithm="rtn", precision="int4",
                                       output_path=str(work / "llama_int4"), cache_dir=str(work / "cache"))
    assert ids(quantized) == ["conversion-rtn_int4"]
    assert "MatMulNBits" in op_types(quantized.get_best_candidate().model_path)
    from olive_systems.evaluation.metrics import METRIC_TYPES

    if "generation" not in METRIC_TYPES:
        return  # auto_opt times decoders by generation; without that metric they get the encoder latency
    optimized = olive_systems.auto_opt(str(tiny_llama), precision="int4", output_path=str(work / "llama_auto"),
                                       cache_dir=str(work / "cache"))
    assert ids(optimized) == ["conversion-rtn_int4"] and not optimized.failures
    assert optimized.get_best_candidate().metrics_value["generation-tokens_per_second"] > 0
