"""One job contract, three systems: local, venv and docker give the same models and metrics, and
every failure (crash, timeout, OOM, daemon down, image missing) comes back as a clear result."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

import olive_systems
from olive_systems.errors import OliveSystemsError
from olive_systems.job import CONTRACT_VERSION, RESULT_SCHEMA, check
from olive_systems.output import WorkflowOutput
from olive_systems.runner import run_job_file

from conftest import REPO, tiny_recipe

CPU_REQUIREMENTS = REPO / "images" / "cpu" / "requirements.txt"

FAULTY_SCRIPT = '''
import os, time

def crash(predictions, targets):
    os._exit(3)

def hang(predictions, targets):
    time.sleep(600)

def hog(predictions, targets):
    blocks = []
    while True:
        blocks.append(bytearray(256 * 1024 * 1024))
'''


def docker_ready() -> str | None:
    """None when a daemon and the cpu image are there; else why not."""
    try:
        from olive_systems.images import image_tag
        from olive_systems.systems.docker import docker_client

        docker_client().images.get(image_tag("cpu"))
        return None
    except Exception as exc:  # any reason at all: no SDK, no daemon, no image
        return str(exc).splitlines()[0]


def need_docker():
    reason = docker_ready()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the docker tests, but: {reason}")
    pytest.skip(f"docker not available here: {reason}")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT exported once; system tests start from this ONNX folder."""
    tmp = tmp_path_factory.mktemp("tiny_onnx")
    recipe = tiny_recipe(tiny_bert, tmp, evaluators={}, pass_flows=[["conversion"]])
    olive_systems.run(recipe)
    return tmp / "out" / "conversion"


def system_recipe(tiny_onnx: Path, tmp: Path, system: dict, metrics_extra=(), flows=None) -> dict:
    recipe = tiny_recipe(tiny_onnx, tmp)
    recipe["input_model"] = {"type": "OnnxModel", "model_path": str(tiny_onnx)}
    del recipe["passes"]["conversion"]
    recipe["pass_flows"] = flows or [["fusion", "dynamic"], ["static"]]
    recipe["systems"] = {"sys": {**system, "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}}
    recipe["engine"].update(host="sys", target="sys")
    recipe["evaluators"]["common"]["metrics"].extend(metrics_extra)
    return recipe


def file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def outcome(output) -> dict:
    return {m.model_id: (file_sha(m.model_path), m.metrics_value["accuracy-accuracy_score"],
                         round(m.metrics_value["fidelity-cosine_mean"], 6)) for m in output.get_output_models()}


# ---- the contract ----

def test_runner_refuses_an_unknown_contract_version(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"contract_version": CONTRACT_VERSION + 1, "job_id": "j"}))
    result = run_job_file(tmp_path / "job.json", on_log=lambda line: None)
    check(result, RESULT_SCHEMA, "result")
    assert result["status"] == "failed"
    assert f"job contract version {CONTRACT_VERSION + 1} is not supported" in result["error"]["message"]
    assert json.loads((tmp_path / "result.json").read_text()) == result


def test_runner_rejects_a_malformed_job_with_the_path(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"contract_version": CONTRACT_VERSION, "job_id": "j", "kind": "train"}))
    result = run_job_file(tmp_path / "job.json", on_log=lambda line: None)
    assert result["status"] == "failed" and "invalid job" in result["error"]["message"]


def test_jobs_and_results_carry_no_secrets(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountKey=supersecret")
    seen = []
    recipe = system_recipe(tiny_onnx, tmp_path, {"type": "LocalSystem"}, flows=[["dynamic"]])
    from olive_systems.engine import Engine
    from olive_systems.recipe import load_recipe

    engine = Engine(load_recipe(recipe), on_event=seen.append)
    original = engine._dispatch

    def spy(*args, **kwargs):
        result, job_dir = original(*args, **kwargs)
        text = (job_dir / "job.json").read_text() + (job_dir / "result.json").read_text()
        assert "supersecret" not in text and "AZURE_STORAGE" not in text
        return result, job_dir

    engine._dispatch = spy
    engine.run()
    assert not [e for e in seen if "supersecret" in json.dumps(e)]


# ---- conformance: local == venv == docker ----

@pytest.fixture(scope="module")
def local_outcome(tiny_onnx, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    return outcome(olive_systems.run(system_recipe(tiny_onnx, tmp, {"type": "LocalSystem"})))


def test_venv_built_from_pinned_requirements_matches_local(tiny_onnx, tmp_path, local_outcome):
    system = {"type": "VenvSystem", "requirements": str(CPU_REQUIREMENTS), "venv_dir": str(tmp_path / "venvs")}
    output = olive_systems.run(system_recipe(tiny_onnx, tmp_path, system))
    assert outcome(output) == local_outcome
    built = [p for p in (tmp_path / "venvs").iterdir() if p.is_dir()]
    assert len(built) == 1 and (built[0] / ".olive-systems-complete").exists()
    # a second run reuses the venv (same requirements hash) instead of building another
    olive_systems.run(system_recipe(tiny_onnx, tmp_path, system), output_dir=tmp_path / "out2", cache_dir=tmp_path / "cache2")
    assert [p for p in (tmp_path / "venvs").iterdir() if p.is_dir()] == built


def test_docker_cpu_image_matches_local(tiny_onnx, tmp_path, local_outcome, monkeypatch):
    need_docker()
    from olive_systems.systems.docker import DockerSystem, docker_client

    runs = []  # this run's id: other runs sharing the daemon have containers of their own
    original_start = DockerSystem.start
    monkeypatch.setattr(DockerSystem, "start", lambda self, mounts: (original_start(self, mounts), runs.append(self.run_id)))
    output = olive_systems.run(system_recipe(tiny_onnx, tmp_path, {"type": "DockerSystem", "image": "cpu"}))
    assert outcome(output) == local_outcome
    assert len(runs) == 1
    leftover = docker_client().containers.list(all=True, filters={"label": f"olive-systems.run={runs[0]}"})
    assert leftover == [], "the warm container must be removed at the end of the run"


def test_a_failed_venv_install_is_never_reused(tmp_path):
    from olive_systems.systems.venv import VenvSystem

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("this-package-does-not-exist-olive==0.0.1\n")
    system = VenvSystem({"requirements": str(requirements), "venv_dir": str(tmp_path / "venvs")}, "broken")
    with pytest.raises(OliveSystemsError, match="installing requirements.txt failed"):
        system.ensure_venv()
    assert not [p for p in (tmp_path / "venvs").iterdir() if p.is_dir()]


# ---- failures come back as results; the rest of the workflow completes ----

def faulty_run(tiny_onnx, tmp_path, system: dict, func: str):
    return olive_systems.run(faulty_recipe(tiny_onnx, tmp_path, system, func))


def faulty_recipe(tiny_onnx, tmp_path, system: dict, func: str) -> dict:
    (tmp_path / "faulty.py").write_text(FAULTY_SCRIPT)
    metric = {"name": "faulty", "type": "custom", "data_config": "pairs", "sub_types": [{"name": "x"}],
              "user_config": {"user_script": str(tmp_path / "faulty.py"), "metric_func": func}}
    recipe = system_recipe(tiny_onnx, tmp_path, system, flows=[["dynamic"]])
    recipe["evaluators"]["faulty"] = {"metrics": [metric]}
    recipe["engine"]["evaluator"] = "faulty"
    recipe["engine"]["evaluate_input_model"] = False
    recipe["passes"]["dynamic_pt"] = {"type": "OnnxDynamicQuantization", "config": {"per_channel": False}}
    recipe["pass_flows"] = [["dynamic"], ["dynamic_pt"]]
    return recipe


@pytest.mark.parametrize("func, expected", [("crash", "runner exited with code 3 without a result"),
                                            ("hang", "past its timeout of 5 s")])
def test_venv_job_crash_and_timeout_are_reported(tiny_onnx, tmp_path, func, expected):
    output = faulty_run(tiny_onnx, tmp_path, {"type": "VenvSystem", "python": sys.executable, "timeout_s": 5}, func)
    assert len(output.failures) == 2, "both flows are tried; each fails on its own"
    assert all(expected in f["error"] for f in output.failures)
    assert (tmp_path / "out" / "workflow_output.json").exists()
    if func == "crash":
        assert all(f["log_tail"] for f in output.failures), "the runner's last lines come back with the error"


@pytest.mark.parametrize("func, expected", [("crash", "runner exited with code 3 without a result"),
                                            ("hang", "past its timeout of 5 s"),
                                            ("hog", "killed out of memory by the OOM killer (memory limit 1g)")])
def test_docker_job_crash_timeout_and_oom_are_reported(tiny_onnx, tmp_path, func, expected):
    need_docker()
    system = {"type": "DockerSystem", "image": "cpu", "timeout_s": 5, "memory_limit": "1g"}
    output = faulty_run(tiny_onnx, tmp_path, system, func)
    assert len(output.failures) == 2
    assert all(expected in f["error"] for f in output.failures), output.failures
    if func == "hog":  # the runner got as far as running the metric before the kill: its log shows it
        assert all(isinstance(f["log_tail"], list) for f in output.failures)


def test_docker_daemon_down_is_one_clear_error(tiny_onnx, tmp_path, monkeypatch):
    pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    recipe = system_recipe(tiny_onnx, tmp_path, {"type": "DockerSystem", "image_tag": "olive-systems/cpu:any"}, flows=[["dynamic"]])
    with pytest.raises(OliveSystemsError, match="Docker daemon is not reachable") as info:
        olive_systems.run(recipe)
    assert "dockerd" in info.value.fix
    assert not (tmp_path / "out").exists()


def test_docker_image_missing_says_how_to_build_it(tiny_onnx, tmp_path):
    need_docker()
    system = {"type": "DockerSystem", "image_tag": "olive-systems/cpu:not-built"}
    with pytest.raises(OliveSystemsError, match="olive-systems/cpu:not-built is not built") as info:
        olive_systems.run(system_recipe(tiny_onnx, tmp_path, system, flows=[["dynamic"]]))
    assert "make images" in info.value.fix


def test_docker_openvino_image_really_runs_openvino(tiny_onnx, tmp_path):
    need_docker()
    recipe = system_recipe(tiny_onnx, tmp_path, {"type": "DockerSystem", "image": "openvino"}, flows=[["fusion"]])
    recipe["systems"]["sys"]["accelerators"] = [{"device": "cpu", "execution_providers": ["OpenVINOExecutionProvider"]}]
    recipe["evaluators"]["common"]["metrics"] = recipe["evaluators"]["common"]["metrics"][:1]  # latency
    output = olive_systems.run(recipe)
    assert not output.failures, output.failures
    best = output.get_best_candidate()
    assert best.from_execution_provider() == "OpenVINOExecutionProvider"
    assert best.metrics_value["latency-p50"] > 0



def test_several_accelerators_in_one_run(tiny_bert, tmp_path):
    """CPU and OpenVINO EPs in one recipe: the export runs once on the host; the EP-dependent pass and
    the evaluations run per accelerator, each in its own system; results come back per device and EP."""
    need_docker()
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["systems"] = {
        "host": {"type": "LocalSystem", "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]},
        "openvino": {"type": "DockerSystem", "image": "openvino",
                     "accelerators": [{"device": "cpu", "execution_providers": ["OpenVINOExecutionProvider"]}]},
    }
    recipe["pass_flows"] = [["conversion"], ["conversion", "static"]]
    recipe["engine"].update(host="host", target=["host", "openvino"], max_concurrency=2)
    output = olive_systems.run(recipe)

    assert not output.failures
    runs = {(j["label"], j["system"]) for j in output.jobs if j["kind"] == "pass"}
    assert [j["label"] for j in output.jobs if j["kind"] == "pass"].count("conversion") == 1
    assert runs == {("conversion", "host"), ("static", "host"), ("static", "openvino")}
    by_ep = {ep: output.CPU[ep] for ep in ("CPUExecutionProvider", "OpenVINOExecutionProvider")}
    assert {m.model_id for m in by_ep["OpenVINOExecutionProvider"]} == {"conversion_cpu-openvino", "conversion-static_cpu-openvino"}
    assert {m.runtime["package"] for m in by_ep["OpenVINOExecutionProvider"]} == {"onnxruntime-openvino"}
    assert {m.runtime["package"] for m in by_ep["CPUExecutionProvider"]} == {"onnxruntime"}
    assert len(output.get_output_models()) == 4 and sorted(m.rank for m in output.get_output_models()) == [1, 2, 3, 4]
    # the same exported model, evaluated on each EP against that EP's own input-model baseline
    assert set(WorkflowOutput.load(output.output_dir)._data["input_model_metrics_by_accelerator"]) == {"cpu-cpu", "cpu-openvino"}


# ---- conformance of the generative passes and metrics ----

@pytest.fixture(scope="module")
def tiny_decoder_onnx(tiny_llama, tmp_path_factory) -> Path:
    from test_llm_end_to_end import llm_recipe

    tmp = tmp_path_factory.mktemp("decoder_onnx")
    recipe = llm_recipe(tiny_llama, tmp)
    recipe.update(evaluators={}, pass_flows=[["conversion"]])
    recipe["engine"].pop("packaging_config")
    olive_systems.run(recipe)
    return tmp / "out" / "conversion"


def decoder_system_recipe(onnx_folder: Path, tmp: Path, system: dict) -> dict:
    from test_llm_end_to_end import llm_recipe

    recipe = llm_recipe(onnx_folder, tmp)
    recipe["input_model"] = {"type": "OnnxModel", "model_path": str(onnx_folder), "task": "text-generation-with-past"}
    recipe["passes"] = {name: entry for name, entry in recipe["passes"].items() if name in ("rtn_int4", "int8")}
    recipe["pass_flows"] = [["rtn_int4"], ["int8"]]
    metrics = recipe["evaluators"]["llm"]["metrics"]
    recipe["evaluators"]["llm"]["metrics"] = [m for m in metrics if m["type"] != "generation"]  # timings differ
    recipe["engine"].pop("packaging_config")
    recipe["systems"] = {"sys": {**system, "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}}
    recipe["engine"].update(host="sys", target="sys")
    return recipe


def decoder_outcome(output) -> dict:
    return {m.model_id: (file_sha(str(Path(m.model_path).parent / "model.onnx") if Path(m.model_path).is_file()
                                  else str(Path(m.model_path) / "model.onnx")),
                         round(m.metrics_value["perplexity-perplexity"], 4), m.metrics_value["agreement-token_match"])
            for m in output.get_output_models()}


@pytest.mark.parametrize("kind", ["venv", "docker"])
def test_weight_only_passes_and_generative_metrics_match_local(tiny_decoder_onnx, tmp_path, kind):
    if kind == "docker":
        need_docker()
    local = decoder_outcome(olive_systems.run(decoder_system_recipe(tiny_decoder_onnx, tmp_path / "local", {"type": "LocalSystem"})))
    system = ({"type": "VenvSystem", "requirements": str(CPU_REQUIREMENTS), "venv_dir": str(tmp_path / "venvs")}
              if kind == "venv" else {"type": "DockerSystem", "image": "cpu"})
    remote = decoder_outcome(olive_systems.run(decoder_system_recipe(tiny_decoder_onnx, tmp_path / kind, system)))
    assert remote == local and len(local) == 2
