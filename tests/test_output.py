"""The WorkflowOutput / DeviceOutput / ModelOutput API of seed 000, on a hand-built result."""

import json

import pytest

from olive_systems.output import WorkflowOutput


def model(model_id, device, ep, rank, latency, history=None):
    return {
        "model_id": model_id, "model_path": f"/out/{model_id}/model.onnx", "model_type": "onnxmodel",
        "model_config": {"type": "ONNXModel", "config": {"inference_settings": {"execution_provider": [[ep, {}]],
                                                                                "session_options": {"intra_op_num_threads": 2}},
                                                         "use_ort_extensions": False}},
        "metrics": {"latency-p50": {"value": latency, "priority": 1, "higher_is_better": False}},
        "device": device, "execution_provider": ep, "rank": rank, "meets_goals": True,
        "run_history": history or [],
    }


HISTORY = [
    {"model_id": "0_OnnxConversion-aa", "parent_model_id": "input_model-11", "pass": "conversion",
     "type": "OnnxConversion", "config": {"target_opset": 17}, "seconds": 1.0, "cached": False},
    {"model_id": "1_OnnxDynamicQuantization-bb", "parent_model_id": "0_OnnxConversion-aa", "pass": "quant",
     "type": "OnnxDynamicQuantization", "config": {}, "seconds": 2.0, "cached": True},
]


@pytest.fixture
def output():
    return WorkflowOutput({
        "input_model_metrics": {"latency-p50": {"value": 30.0, "priority": 1, "higher_is_better": False}},
        "models": [
            model("fp32", "cpu", "CPUExecutionProvider", 3, 20.0),
            model("int8", "cpu", "CPUExecutionProvider", 1, 9.0, HISTORY),
            model("ov", "cpu", "OpenVINOExecutionProvider", 2, 12.0),
            model("cuda", "gpu", "CUDAExecutionProvider", 1, 3.0),
        ],
    })


def test_devices_by_key_or_attribute_in_any_case(output):
    assert output.CPU is output["cpu"] is output.cpu
    assert output["GPU"].device == "gpu"
    assert [m.model_id for m in output.CPU["CPUExecutionProvider"]] == ["fp32", "int8"]
    assert output.cpu["cpuexecutionprovider"] == output.CPU["CPUExecutionProvider"]
    with pytest.raises(KeyError):
        output["npu"]
    with pytest.raises(AttributeError):
        output.npu


def test_best_candidates(output):
    assert output.has_output_model()
    assert sorted(output.get_available_devices()) == ["cpu", "gpu"]
    assert output.get_best_candidate_by_device("CPU").model_id == "int8"
    assert output.CPU.get_best_candidate_by_execution_provider("OpenVINOExecutionProvider").model_id == "ov"
    assert [m.model_id for m in output.get_output_models_by_device("cpu")] == ["int8", "ov", "fp32"]
    assert output.get_best_candidate().rank == 1
    assert output.get_input_model_metrics()["latency-p50"]["value"] == 30.0


def test_model_output_accessors(output):
    best = output.get_output_model_by_id("int8")
    assert best.metrics_value == {"latency-p50": 9.0}
    assert best.from_device() == "cpu" and best.from_execution_provider() == "CPUExecutionProvider"
    assert best.from_pass() == "OnnxDynamicQuantization"
    assert best.get_parent_model_id() == "0_OnnxConversion-aa"
    assert best.use_ort_extension() is False
    assert best.get_inference_config()["session_options"] == {"intra_op_num_threads": 2}
    assert best.model_type == "onnxmodel" and best.model_path.endswith("int8/model.onnx")
    assert output.get_output_model_by_id("nope") is None


def test_trace_back_run_history_goes_from_model_to_input(output):
    history = output.trace_back_run_history("int8")
    assert list(history) == ["1_OnnxDynamicQuantization-bb", "0_OnnxConversion-aa", "input_model-11"]
    assert history["0_OnnxConversion-aa"]["config"] == {"target_opset": 17}
    assert history["input_model-11"] is None


def test_load_round_trip(output, tmp_path):
    (tmp_path / "workflow_output.json").write_text(json.dumps(output.to_dict()))
    loaded = WorkflowOutput.load(tmp_path)
    assert loaded.get_best_candidate().model_id == "int8"
    assert loaded.CPU.get_best_candidate().metrics_value == {"latency-p50": 9.0}
