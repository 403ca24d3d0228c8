"""tune_session_params and OrtSessionParamsTuning's options, on real ONNX Runtime sessions: IOBinding,
extra session config entries, profiling, thread / mode / level lists, cpu_cores, providers_list (an
EP this build lacks is an error, never a fallback), EP options refused for EPs that are not tuned,
and the KV-cache decode step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import olive_systems
from olive_systems.errors import PassError, RecipeError
from olive_systems.ort import create_session
from olive_systems.passes.session_tuning import OrtSessionParamsTuning
from olive_systems.passes.session_tuning_options import decode_step_feed, make_runner, tuned_providers

SPINNING = {"session.intra_op.allow_spinning": "0"}


def tiny_onnx(folder: Path, past: bool = False) -> Path:
    """y = relu(x @ W), x of shape [batch, 8]; with past, a decoder-shaped graph: input_ids,
    attention_mask [batch, total_sequence_length] and past_key_values.0.key [batch, 2, past, 4]
    (the output sums the mask so the graph uses every input)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "W")
    if not past:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", 4])], [weight])
    else:
        graph = helper.make_graph(
            [helper.make_node("ReduceSum", ["attention_mask"], ["mask_sum"], keepdims=0),
             helper.make_node("ReduceSum", ["past_key_values.0.key"], ["past_sum"], keepdims=0),
             helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["ids"], ["ids_sum"], keepdims=0),
             helper.make_node("Cast", ["mask_sum"], ["mask_float"], to=TensorProto.FLOAT),
             helper.make_node("Sum", ["mask_float", "past_sum", "ids_sum"], ["logits"])], "tiny_decoder",
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
             helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
             helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT,
                                           ["batch_size", 2, "past_sequence_length", 4])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("tiny_onnx") / "model")


def tune(model_dir: Path, tmp_path: Path, **arguments):
    return olive_systems.tune_session_params(str(model_dir), output_path=str(tmp_path / "out"),
                                             cache_dir=str(tmp_path / "cache"), **arguments)


def tuned(output):
    assert not output.failures, output.failures
    best = output.get_best_candidate()
    config = best.model_config["config"]
    # every setting of the grid is timed against ONNX Runtime's default ("default"), which it must beat
    grid = [record for record in config["model_attributes"]["tuning"] if record["setting"] != "default"]
    return best, config["inference_settings"], grid


def test_io_bind_extra_config_and_profiling_end_to_end(model_dir, tmp_path):
    output = tune(model_dir, tmp_path, io_bind=True, enable_profiling=True, intra_thread_num_list=[1, 2],
                  execution_mode_list=[0, 1], extra_session_config=json.dumps(SPINNING))
    best, settings, timings = tuned(output)
    # the grid: 2 thread counts x 2 modes x IOBinding off/on, each timed
    assert len(timings) == 8
    assert {(t["intra_op_num_threads"], t["execution_mode"], t["io_bind"]) for t in timings} == {
        (i, m, b) for i in (1, 2) for m in (0, 1) for b in (False, True)}
    assert "io_bind" in settings and settings["session_options"]["extra_session_config"] == SPINNING
    # the fastest setting is what inference_config.json of the candidate holds
    folder = Path(best.model_path).parent
    assert json.loads((folder / "inference_config.json").read_text()) == settings
    # the extra entries reach the session made from those settings
    session = create_session(Path(best.model_path), settings, "CPUExecutionProvider")
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # the profile of the fastest setting is kept in the candidate: ORT's trace of node kernels
    events = json.loads((folder / "ort_profile.json").read_text())
    assert any(event.get("cat") == "Node" and "MatMul" in event.get("name", "") for event in events)
    assert best.model_config["config"]["model_attributes"]["profile"] == "ort_profile.json"


def test_io_bind_runs_give_the_outputs_of_a_plain_run(model_dir):
    model_path = model_dir / "model.onnx"
    feed = {"x": np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)}
    settings = {"execution_provider": [["CPUExecutionProvider", {}]], "session_options": {}, "io_bind": True}
    session = create_session(model_path, settings, "CPUExecutionProvider")
    run_once = make_runner(session, feed, settings, model_path)
    run_once()
    np.testing.assert_array_equal(run_once.outputs()[0], session.run(None, feed)[0])


def test_a_model_tuned_to_io_bind_is_timed_with_iobinding(model_dir):
    """The evaluator times a model the way its inference settings serve it: a latency figure of a
    model whose tuning chose io_bind comes from IOBinding runs, not plain session.run."""
    from olive_systems.evaluation.evaluator import ModelRunner
    from olive_systems.evaluation.timing import timing_values
    from olive_systems.models import ModelRef

    class Counting:  # the session, counting the calls each way
        def __init__(self, session):
            self.session, self.calls = session, {"run": 0, "run_with_iobinding": 0}

        def __getattr__(self, name):
            if name in ("run", "run_with_iobinding"):
                self.calls[name] += 1
            return getattr(self.session, name)

    metric = {"name": "latency", "type": "latency", "sub_types": [{"name": "avg"}],
              "metric_config": {"warmup_num": 1, "repeat_test_num": 10, "budget_s": 1}}
    feed = {"x": np.ones((2, 8), dtype=np.float32)}
    counted = {}
    for io_bind in (False, True):
        settings = {"execution_provider": [["CPUExecutionProvider", {}]], "session_options": {}, "io_bind": io_bind}
        runner = ModelRunner(ModelRef(type="OnnxModel", path=str(model_dir), hash="0" * 64, inference_settings=settings),
                             "CPUExecutionProvider")
        runner.session = Counting(runner.session)
        values, _ = timing_values(metric, {"model": runner}, feed, {}, lambda message: None)["model"]
        assert values["avg"] > 0
        counted[io_bind] = runner.session.calls
    assert counted[False]["run"] > 0 and counted[False]["run_with_iobinding"] == 0
    assert counted[True]["run_with_iobinding"] > 0 and counted[True]["run"] == 0


def test_a_model_tuned_onto_another_ep_is_evaluated_on_it(model_dir):
    """force_evaluate_other_eps can leave a CPU-target candidate's inference settings on another EP:
    its evaluation runs there, as it will be served, not silently on the target's EP."""
    from olive_systems.evaluation.evaluator import ModelRunner
    from olive_systems.models import ModelRef

    settings = {"execution_provider": [["AzureExecutionProvider", {}]], "session_options": {}, "io_bind": False}
    tuned_elsewhere = ModelRef(type="OnnxModel", path=str(model_dir), hash="0" * 64, inference_settings=settings)
    assert ModelRunner(tuned_elsewhere, "CPUExecutionProvider").session.get_providers()[0] == "AzureExecutionProvider"
    untuned = ModelRef(type="OnnxModel", path=str(model_dir), hash="0" * 64)
    assert ModelRunner(untuned, "CPUExecutionProvider").session.get_providers()[0] == "CPUExecutionProvider"
    # an EP named without options is still the one it is served on, not the target's
    by_name = ModelRef(type="OnnxModel", path=str(model_dir), hash="0" * 64,
                       inference_settings={"execution_provider": ["AzureExecutionProvider"]})
    assert ModelRunner(by_name, "CPUExecutionProvider").session.get_providers()[0] == "AzureExecutionProvider"


def test_levels_threads_and_cpu_cores(model_dir, tmp_path):
    output = tune(model_dir, tmp_path, opt_level_list=[0, 99], cpu_cores=3, inter_thread_num_list=[1, 2])
    _, _, timings = tuned(output)
    assert {(t["intra_op_num_threads"], t["inter_op_num_threads"], t["graph_optimization_level"]) for t in timings} == {
        (i, j, level) for i in (1, 3) for j in (1, 2) for level in (0, 99)}
    assert not any(t["io_bind"] for t in timings)


REFUSED = [
    ({"providers_list": ["CUDAExecutionProvider"]}, "CUDAExecutionProvider is not in this onnxruntime build"),
    ({"providers_list": ["cpuexecutionprovider"]}, "case sensitive"),
    ({"providers_list": ["CPUExecutionProvider", "CUDAExecutionProvider"], "disable_force_evaluate_other_eps": True},
     "besides the target's CPUExecutionProvider"),
    ({"enable_cuda_graph": True, "io_bind": True}, "enable_cuda_graph"),
    ({"trt_fp16_enable": True}, "trt_fp16_enable is an option of TensorrtExecutionProvider"),
    ({"cpu_cores": 2, "intra_thread_num_list": [1]}, "cpu_cores and intra_op_thread_num_list"),
    ({"extra_session_config": "{not json"}, "extra_session_config"),
    ({"execution_mode_list": [2]}, "execution_mode_list"),
    ({"opt_level_list": [3]}, "opt_level_list"),
    ({"predict_with_kv_cache": True}, "no past key/value inputs"),
    ({"memory": 1 << 30}, "memory"),
]


@pytest.mark.parametrize("arguments,named", REFUSED, ids=[n[:30] for _, n in REFUSED])
def test_what_cannot_be_honoured_is_refused_before_any_work(arguments, named, model_dir, tmp_path):
    with pytest.raises(RecipeError) as error:
        tune(model_dir, tmp_path, **arguments)
    assert named in error.value.message and error.value.fix
    assert list(tmp_path.iterdir()) == []  # no output folder, no cache: nothing ran


def test_the_pass_refuses_in_a_recipe_too_never_falling_back():
    config = OrtSessionParamsTuning.resolve_config({"providers_list": ["CUDAExecutionProvider"],
                                                    "force_evaluate_other_eps": True})
    with pytest.raises(PassError, match="CUDAExecutionProvider is not in this onnxruntime build"):
        tuned_providers(config, "CPUExecutionProvider")
    config = OrtSessionParamsTuning.resolve_config({"enable_cuda_graph": True})
    with pytest.raises(PassError, match="CUDA graphs are an option of"):
        tuned_providers(config, "CPUExecutionProvider")
    cuda_graph_without_binding = OrtSessionParamsTuning.resolve_config({"enable_cuda_graph": True})
    with pytest.raises(PassError, match="needs io_bind"):  # checked on the options alone, before the EPs present
        tuned_providers(cuda_graph_without_binding, "CUDAExecutionProvider")
    decode_step_on_data = OrtSessionParamsTuning.resolve_config({"predict_with_kv_cache": True, "data_config": "d"})
    with pytest.raises(PassError, match="predict_with_kv_cache times a decode step"):  # at recipe load, too
        tuned_providers(decode_step_on_data, "CPUExecutionProvider", check_available=False)


def test_providers_list_of_the_target_is_tuned(model_dir, tmp_path):
    output = tune(model_dir, tmp_path, providers_list=["CPUExecutionProvider"], intra_thread_num_list=[1])
    _, settings, timings = tuned(output)
    assert settings["execution_provider"] == [["CPUExecutionProvider", {}]]
    assert [t["execution_provider"] for t in timings] == ["CPUExecutionProvider"]


def test_kv_cache_times_a_decode_step(tmp_path):
    folder = tiny_onnx(tmp_path / "decoder", past=True)
    session = create_session(folder / "model.onnx", None, "CPUExecutionProvider")
    feed = decode_step_feed(session, 1, 16)
    assert feed["input_ids"].shape == (1, 1)  # one new token
    assert feed["past_key_values.0.key"].shape == (1, 2, 16, 4)  # after a 16-token past
    assert feed["attention_mask"].shape == (1, 17) and feed["attention_mask"].all()
    output = tune(folder, tmp_path, predict_with_kv_cache=True, intra_thread_num_list=[1])
    _, _, timings = tuned(output)
    assert len(timings) == 1 and timings[0]["median_ms"] > 0


@pytest.mark.parametrize("config,named", [
    ({"enable_cuda_graph": True, "io_bind": True}, "CUDA graphs are an option of"),
    ({"trt_fp16_enable": True}, "trt_fp16_enable is an option of TensorrtExecutionProvider"),
    ({"providers_list": ["CPUExecutionProvider", "OpenVINOExecutionProvider"]}, "force_evaluate_other_eps"),
])
def test_a_recipe_with_an_option_its_target_lacks_is_refused_when_it_loads(config, named, model_dir, tmp_path):
    from olive_systems.recipe import load_recipe

    recipe = {"input_model": {"type": "OnnxModel", "model_path": str(model_dir)},
              "passes": {"tuning": {"type": "OrtSessionParamsTuning", "config": config}},
              "engine": {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}}
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert "passes.tuning.config (target CPUExecutionProvider)" in error.value.message
    assert named in error.value.message + error.value.fix


def test_other_eps_of_providers_list_are_tuned_too_unless_disabled(model_dir, tmp_path):
    # AzureExecutionProvider is in every onnxruntime build; a model without remote ops runs on it (its
    # nodes placed on CPU), so it stands in for a second EP here.
    two = ["CPUExecutionProvider", "AzureExecutionProvider"]
    output = tune(model_dir, tmp_path, providers_list=two, intra_thread_num_list=[1])
    _, settings, timings = tuned(output)
    assert [t["execution_provider"] for t in timings] == two
    assert settings["execution_provider"][0][0] in two
    with pytest.raises(RecipeError, match="AzureExecutionProvider besides the target's CPUExecutionProvider") as error:
        tune(model_dir, tmp_path / "disabled", providers_list=two, disable_force_evaluate_other_eps=True)
    assert "disable_force_evaluate_other_eps" in error.value.fix


def test_a_candidate_served_on_another_ep_is_timed_side_by_side_with_its_targets(model_dir, tmp_path):
    """A candidate whose inference settings name another EP than the target's (as session tuning with
    force_evaluate_other_eps may leave it) is still one of the target's candidates: timed side by side
    with the others and reported on the EP it is served on, not left without a latency figure."""
    elsewhere = {"execution_provider": [["AzureExecutionProvider", {}]], "session_options": {}, "io_bind": False}
    recipe = {"input_model": {"type": "OnnxModel", "model_path": str(model_dir), "inference_settings": elsewhere},
              "evaluators": {"common": {"metrics": [{"name": "latency", "type": "latency",
                                                     "sub_types": [{"name": "avg", "priority": 1}],
                                                     "metric_config": {"warmup_num": 1, "budget_s": 1}}]}},
              "passes": {"quantize": {"type": "OnnxDynamicQuantization", "config": {}}},
              "engine": {"evaluator": "common", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}}
    output = olive_systems.run(recipe)
    assert not output.failures, output.failures
    (candidate,) = output.get_output_models()
    assert candidate.get_inference_config()["execution_provider"][0][0] == "AzureExecutionProvider"
    assert candidate.metrics["latency-avg"]["value"] > 0
    assert candidate.from_execution_provider() == "AzureExecutionProvider"
