"""The AzureML system and packaging.

Nothing here can reach Azure, so everything but the live suite is offline: the job YAML the system
writes is loaded back with azure.ai.ml.load_job and compared field by field, the SDK's own
validation must accept it and reject a broken field, the command it runs is executed here against
folders laid out as AzureML mounts them, failures are mapped from the SDK's real exception types,
the engine runs packaging_config at the end of a run, and the packaging Model / Data entities are
built, dumped and loaded back. The live suite runs end to end only when AZUREML_SUBSCRIPTION_ID,
AZUREML_RESOURCE_GROUP and AZUREML_WORKSPACE are set (and AZUREML_COMPUTE, default cpu-cluster);
otherwise it is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("azure.ai.ml")

from azure.ai.ml import load_job  # noqa: E402

from olive_systems.errors import OliveSystemsError  # noqa: E402
from olive_systems.images import image_tag  # noqa: E402
from olive_systems.job import CONTRACT_VERSION, RESULT_SCHEMA, check, write_json  # noqa: E402
from olive_systems.passes import get_pass_class  # noqa: E402
from olive_systems.systems import SYSTEMS, make_system  # noqa: E402
from olive_systems.systems.azureml import AzureMLSystem, azureml_reference, map_failure  # noqa: E402

LIVE_VARS = ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE")
SYSTEM = {"type": "AzureMLSystem", "compute": "cpu-cluster", "instance_count": 2, "image": "cpu", "keyvault_name": "olive-kv"}


def tiny_onnx(folder: Path) -> Path:
    """One MatMul, big enough for dynamic quantization to have a weight to quantize."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).random((64, 64), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), folder / "model.onnx")
    return folder


def write_pass_job(root: Path, model: Path | str) -> Path:
    job_dir = (root / "jobs" / "job1").resolve()
    job_dir.mkdir(parents=True)
    np.savez(job_dir / "data-calib.npz", groups=np.asarray(1))  # data travels beside the job
    write_json(job_dir / "job.json", {
        "contract_version": CONTRACT_VERSION, "job_id": "job1", "kind": "pass",
        "pass": {"name": "dynamic", "type": "OnnxDynamicQuantization",
                 "config": get_pass_class("OnnxDynamicQuantization").resolve_config({})},
        "input_model": {"type": "OnnxModel", "path": str(model), "hash": "0" * 64},
        "accelerator": {"device": "cpu", "execution_provider": "CPUExecutionProvider"},
        "data": {}, "output_dir": str(job_dir / "output"), "timeout_s": 600,
    })
    return job_dir / "job.json"


@pytest.fixture
def job(tmp_path) -> Path:
    return write_pass_job(tmp_path, tiny_onnx(tmp_path / "model").resolve())


def test_registered_and_offline_properties():
    system = make_system(SYSTEM, "aml")
    assert SYSTEMS["AzureMLSystem"] is AzureMLSystem and isinstance(system, AzureMLSystem)
    assert system.fingerprint(("onnxruntime",)) == {"system": "azureml", "image": image_tag("cpu")}
    assert system.can_run_torch is False
    assert system.available_providers() == ["CPUExecutionProvider"]
    assert AzureMLSystem({**SYSTEM, "image": "cuda"}).available_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    full = "myacr.azurecr.io/olive-systems/cpu:abc"
    assert AzureMLSystem({**SYSTEM, "environment_image": full}).fingerprint(()) == {"system": "azureml", "image": full}


def test_importing_olive_systems_does_not_import_azure():
    code = "import sys, olive_systems.systems; print(any(m.startswith('azure') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_job_yaml_loads_back_field_by_field(job, tmp_path):
    system = AzureMLSystem(SYSTEM, "aml")
    path = system.write_job_yaml(job, tmp_path / "job.yaml")
    loaded = load_job(path)
    job_dir, model = job.parent, json.loads(job.read_text())["input_model"]["path"]
    assert loaded.type == "command"
    assert loaded.compute == "cpu-cluster"
    assert loaded.resources.instance_count == 2
    assert loaded.environment.image == image_tag("cpu")
    assert loaded.environment_variables["OLIVE_SYSTEMS_KEYVAULT"] == "olive-kv"
    assert not any("secret" in key.lower() or "token" in key.lower() for key in loaded.environment_variables)
    assert {name: (i.type, i.path) for name, i in loaded.inputs.items()} == {
        "job": ("uri_file", str(job)), "job_dir": ("uri_folder", str(job_dir)), "model": ("uri_folder", model)}
    assert {name: (o.type, o.mode) for name, o in loaded.outputs.items()} == {"result": ("uri_folder", "rw_mount")}
    assert loaded.command == (f"python -m olive_systems.runner --map {job_dir}/output=${{{{outputs.result}}}}/output "
                              f"--map {job_dir}=${{{{inputs.job_dir}}}} --map {model}=${{{{inputs.model}}}} ${{{{inputs.job}}}}")
    assert (Path(loaded.code) / "olive_systems" / "runner.py").is_file()  # this checkout's code travels with the job
    assert loaded.limits.timeout == 600
    assert loaded._validate().passed  # the SDK's own validation accepts it


def test_sdk_rejects_a_broken_field(job, tmp_path):
    document = yaml.safe_load(AzureMLSystem(SYSTEM).write_job_yaml(job, tmp_path / "job.yaml").read_text())
    document["outputs"]["result"]["type"] = "uri_fodler"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(Exception, match="uri_fodler|type"):
        load_job(tmp_path / "broken.yaml")


@pytest.mark.parametrize("spec, kind, path", [
    ({"type": "azureml_model", "name": "bert", "version": "3"}, "custom_model", "azureml:bert:3"),  # loads back as bert:3
    ({"type": "azureml_registry_model", "registry_name": "azureml", "name": "bert", "version": "1"}, "custom_model",
     "azureml://registries/azureml/models/bert/versions/1"),
    ({"type": "azureml_datastore", "datastore_name": "workspaceblobstore", "relative_path": "models/bert"}, "uri_folder",
     "azureml://datastores/workspaceblobstore/paths/models/bert"),
])
def test_azureml_model_references_become_job_inputs(spec, kind, path, tmp_path):
    job = write_pass_job(tmp_path, azureml_reference(spec))
    loaded = load_job(AzureMLSystem(SYSTEM).write_job_yaml(job, tmp_path / "job.yaml"))
    assert loaded.inputs["model"].type == kind
    assert loaded.inputs["model"].path in (path, path.removeprefix("azureml:"))  # the SDK's short asset form
    assert f"--map {path}=${{{{inputs.model}}}}" in loaded.command


def test_command_runs_against_azureml_style_mounts(job, tmp_path):
    """What AzureML does with the command: substitute mount points, run it in the code folder."""
    system = AzureMLSystem(SYSTEM)
    loaded = load_job(system.write_job_yaml(job, tmp_path / "job.yaml"))
    mounts = tmp_path / "mnt"
    shutil.copytree(job.parent, mounts / "job_dir")
    shutil.copytree(loaded.inputs["model"].path, mounts / "model")
    (mounts / "result").mkdir()
    command = loaded.command.replace("python ", f"{sys.executable} ", 1)  # the image's python is this one here
    for name, target in {"${{inputs.job}}": mounts / "job_dir" / "job.json", "${{inputs.job_dir}}": mounts / "job_dir",
                         "${{inputs.model}}": mounts / "model", "${{outputs.result}}": mounts / "result"}.items():
        command = command.replace(name, str(target))
    os.chmod(mounts / "job_dir", 0o555)  # inputs are read-only mounts
    try:
        run = subprocess.run(command, shell=True, cwd=loaded.code, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ""})
    finally:
        os.chmod(mounts / "job_dir", 0o755)
    assert run.returncode == 0, run.stderr
    result = json.loads((mounts / "result" / "result.json").read_text())
    check(result, RESULT_SCHEMA, "result")
    assert result["status"] == "succeeded"
    assert (mounts / "result" / "output" / result["output_model"]["path"] / "model.onnx").is_file()


def test_runner_map_rejects_bad_argument(job):
    from olive_systems.runner import main

    assert main(["--map", "nothing", str(job)]) == 2


def test_failures_map_from_real_sdk_exceptions():
    from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, JobException, ValidationException
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    def job_error(message):
        return JobException(message=message, no_personal_data_message=message, target=ErrorTarget.JOB,
                            error_category=ErrorCategory.USER_ERROR)

    cases = {
        "quota": (HttpResponseError(message="(QuotaExceeded) Not enough quota for Standard_D4"), "quota"),
        "pull": (job_error("Failed to pull image: pull access denied for olive-systems/cpu"), "pull the job's image"),
        "user": (job_error("Execution failed. User process 'python' exited with status code 1"), "user error"),
        "auth": (ClientAuthenticationError(message="DefaultAzureCredential failed"), "authentication"),
        "missing": (ResourceNotFoundError(message="Workspace ws not found"), "not found"),
    }
    for name, (exc, words) in cases.items():
        error = map_failure(exc)
        assert isinstance(error, OliveSystemsError) and words in error.message and error.fix, (name, error)
    validation = ValidationException(message="bad compute", no_personal_data_message="bad", target=ErrorTarget.JOB)
    assert "bad compute" in map_failure(validation).message


def test_failures_map_from_finished_jobs():
    class Finished:  # the Job entity's status / error, as jobs.get returns them
        def __init__(self, status, error=None):
            self.status, self.error = status, error

    assert "cancelled" in map_failure(Finished("Canceled")).message
    assert "quota" in map_failure(Finished("Failed", {"code": "QuotaExceeded"})).message
    assert "image" in map_failure(Finished("Failed", {"message": "ImagePullBackOff"})).message
    assert "Failed" in map_failure(Finished("Failed")).message


class FakeJobs:
    """MLClient.jobs as run_job uses it: create_or_update, get (a status sequence), download, begin_cancel.
    download lays the output out as the SDK does: <path>/named-outputs/result/..."""

    def __init__(self, statuses, result=None):
        self.statuses, self.result, self.submitted, self.cancelled = list(statuses), result, [], []

    def create_or_update(self, job):
        self.submitted.append(job)
        return type("Created", (), {"name": f"job-{len(self.submitted)}"})()

    def get(self, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return type("Got", (), {"status": status, "studio_url": "https://ml.azure.com/x", "error": None})()

    def download(self, name, download_path, output_name):
        if self.result is not None:
            folder = Path(download_path) / "named-outputs" / output_name
            (folder / "output" / "model").mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps(self.result))
            (folder / "job.mapped.json").write_text("{}")

    def begin_cancel(self, name):
        self.cancelled.append(name)


def started_system(jobs, job) -> AzureMLSystem:
    system = AzureMLSystem({**SYSTEM, "poll_s": 0})
    system.client, system.code_dir = type("Client", (), {"jobs": jobs})(), job.parent.parent / "code"
    system.code_dir.mkdir(exist_ok=True)
    return system


def runner_result(status="succeeded"):
    return {"contract_version": CONTRACT_VERSION, "job_id": "job1", "status": status, "output_model": None, "metrics": None,
            "artifacts": None, "timings": {"seconds": 1.0}, "log_tail": [],
            "error": None if status == "succeeded" else {"type": "PassError", "message": "bad model", "fix": "fix it"}}


def test_run_job_streams_status_and_downloads_the_result(job):
    jobs = FakeJobs(["Queued", "Running", "Running", "Completed"], runner_result())
    lines = []
    result = started_system(jobs, job).run_job(job, 60, lines.append)
    assert result["status"] == "succeeded"
    assert lines == ["azureml job job-1: Queued (https://ml.azure.com/x)", "azureml job job-1: Running", "azureml job job-1: Completed"]
    assert (job.parent / "output" / "model").is_dir() and not (job.parent / "job.mapped.json").exists()


def test_run_job_failures_come_back_as_results(job):
    # The runner's own failure (exit 1 -> AzureML Failed) keeps its message.
    failed = started_system(FakeJobs(["Failed"], runner_result("failed")), job).run_job(job, 60, lambda line: None)
    assert failed["error"]["message"] == "bad model"
    (job.parent / "result.json").unlink()
    cancelled = started_system(FakeJobs(["Canceled"]), job).run_job(job, 60, lambda line: None)
    assert "cancelled" in cancelled["error"]["message"]
    jobs = FakeJobs(["Running"])
    late = started_system(jobs, job).run_job(job, 0, lambda line: None)
    assert "timeout" in late["error"]["message"] and jobs.cancelled == ["job-1"]


class LocalCompute:
    """MLClient.jobs backed by local processes: each submitted command job runs its runner here, as a
    compute node would. A stand-in only because nothing here can reach Azure; it counts how many jobs
    run at once."""

    def __init__(self):
        self.processes, self.most_at_once, self.lock = {}, 0, threading.Lock()

    def create_or_update(self, job):
        job_path = Path(job.inputs["job"]._data.path)
        with self.lock:  # the engine submits from several threads
            name = f"job-{len(self.processes) + 1}"
            self.processes[name] = (subprocess.Popen([sys.executable, "-m", "olive_systems.runner", str(job_path)],
                                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), job_path)
            self.most_at_once = max(self.most_at_once, sum(p.poll() is None for p, _ in self.processes.values()))
        return type("Created", (), {"name": name})()

    def get(self, name):
        process, _ = self.processes[name]
        status = "Running" if process.poll() is None else ("Completed" if process.returncode == 0 else "Failed")
        return type("Got", (), {"status": status, "studio_url": "https://ml.azure.com/x", "error": None})()

    def download(self, name, download_path, output_name):
        folder = Path(download_path) / "named-outputs" / output_name
        folder.mkdir(parents=True)
        shutil.copy(self.processes[name][1].parent / "result.json", folder / "result.json")


def test_engine_runs_independent_azureml_jobs_together(tiny_bert, tmp_path, monkeypatch):
    """Trials on an AzureML target are submitted side by side up to engine.max_concurrency (each job has
    its own node, so they cannot disturb each other); their timings, which must compare, are one job."""
    from conftest import tiny_recipe

    import olive_systems

    compute = LocalCompute()

    def start(self, mounts):
        self.client, self.code_dir = type("Client", (), {"jobs": compute})(), Path(mounts["jobs"])

    monkeypatch.setattr(AzureMLSystem, "start", start)
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["dynamic"]["config"] = {"per_channel": {"choices": [True, False]}, "weight_type": {"choices": ["QInt8", "QUInt8"]}}
    recipe["pass_flows"] = [["conversion", "dynamic"]]
    recipe["systems"] = {"host": {"type": "LocalSystem"}, "aml": {**SYSTEM, "poll_s": 0.05, "workspace_name": "ws",
                                                                  "subscription_id": "sub", "resource_group": "rg"}}
    recipe["engine"].update(host="host", target="aml", max_concurrency=4)
    output = olive_systems.run(recipe)

    assert not output.failures, output.failures
    assert len(output.get_output_models()) == 4
    assert {j["system"] for j in output.jobs if j["label"] != "conversion" and "input" not in j["label"]} == {"aml"}
    assert compute.most_at_once >= 3
    # the four candidates are timed side by side, on one node, in one job
    assert [j["label"] for j in output.jobs if j["system"] == "aml" and j["measures"]] == ["timing 4 models"]


@pytest.mark.skipif(not all(os.environ.get(v) for v in LIVE_VARS),
                    reason=f"live AzureML suite needs {', '.join(LIVE_VARS)} (nothing here can reach Azure)")
def test_live_job_runs_end_to_end(job, tmp_path):
    system = AzureMLSystem({**SYSTEM, "instance_count": 1, "compute": os.environ.get("AZUREML_COMPUTE", "cpu-cluster"),
                            "subscription_id": os.environ["AZUREML_SUBSCRIPTION_ID"],
                            "resource_group": os.environ["AZUREML_RESOURCE_GROUP"],
                            "workspace_name": os.environ["AZUREML_WORKSPACE"],
                            **({"environment_image": os.environ["AZUREML_IMAGE"]} if os.environ.get("AZUREML_IMAGE") else {})})
    system.start({"jobs": job.parent.parent, "cache": tmp_path, "input": tmp_path})
    try:
        result = system.run_job(job, 3600, print)
    finally:
        system.stop()
    assert result["status"] == "succeeded", result["error"]
    assert (job.parent / "output" / result["output_model"]["path"] / "model.onnx").is_file()


# ---- packaging ----

def ranked_output(tmp_path):
    from olive_systems.models import ModelRef
    from olive_systems.output_dir import write_output_dir

    candidates = []
    for rank, name in enumerate(["dynamic", "fp32"], start=1):
        folder = tiny_onnx(tmp_path / "models" / name)
        candidates.append({"model_id": name, "model": ModelRef(type="OnnxModel", path=str(folder), hash="0" * 64),
                           "history": [], "metrics": {"latency-avg": {"value": float(rank), "priority": 1, "higher_is_better": False}},
                           "device": "cpu", "execution_provider": "CPUExecutionProvider", "rank": rank,
                           "meets_goals": True, "missed_goals": []})
    return write_output_dir(tmp_path / "out", candidates, {"input_model_metrics": None, "failures": [], "steps": []})


@pytest.mark.parametrize("kind", ["AzureMLModels", "AzureMLData"])
def test_packaging_entities_dump_and_load_back(kind, tmp_path):
    from azure.ai.ml import load_data, load_model

    from olive_systems.packaging import package

    output = ranked_output(tmp_path)
    entry = {"type": kind, "name": "olive_output_model", "config": {"version": "3", "description": "bert ptq"}}
    written = package(output, [entry], tmp_path / "out")
    assert [p.name for p in written] == ["olive_output_model_cpu-cpu_1.yaml", "olive_output_model_cpu-cpu_2.yaml"]
    for path, model in zip(written, output.get_output_models()):
        loaded = (load_model if kind == "AzureMLModels" else load_data)(path)
        folder = tmp_path / "out" / model.model_id
        assert (loaded.name, loaded.version, loaded.description) == (path.stem, "3", "bert ptq")
        assert loaded.type == ("custom_model" if kind == "AzureMLModels" else "uri_folder")
        assert Path(loaded.path) == folder
        assert loaded.tags["execution_provider"] == "CPUExecutionProvider" and loaded.tags["rank"] == str(model.rank)
        for beside in ("model.onnx", "inference_config.json", "metrics.json", "model_info.json"):
            assert (folder / beside).is_file(), beside
        assert json.loads((folder / "model_info.json").read_text())["rank"] == model.rank


def test_packaging_registers_through_a_workspace_client(tmp_path):
    """Live registration goes through MLClient.models / .data; a recording client stands in for the workspace."""
    from azure.core.exceptions import ClientAuthenticationError

    from olive_systems.packaging import package

    class Operations:
        def __init__(self, fail=False):
            self.created, self.fail = [], fail

        def create_or_update(self, asset):
            if self.fail:
                raise ClientAuthenticationError(message="no credential")
            self.created.append(asset)

    class Client:
        models, data = Operations(), Operations()

    output = ranked_output(tmp_path)
    assert package(output, {"type": "AzureMLModels", "name": "m"}, tmp_path / "out", Client) == []
    assert [a.name for a in Client.models.created] == ["m_cpu-cpu_1", "m_cpu-cpu_2"] and not Client.data.created
    Client.data = Operations(fail=True)
    with pytest.raises(OliveSystemsError, match="authentication"):
        package(output, {"type": "AzureMLData", "name": "d"}, tmp_path / "out", Client)


def test_model_and_data_assets_of_one_name_keep_their_own_yaml(tmp_path):
    """AzureMLModels and AzureMLData named alike once wrote the same <name>.yaml: the second replaced the first."""
    from azure.ai.ml import load_data, load_model

    from olive_systems.packaging import package

    output = ranked_output(tmp_path)
    entries = [{"type": kind, "name": "olive_output_model"} for kind in ("AzureMLModels", "AzureMLData")]
    written = package(output, entries, tmp_path / "out")
    assert len(written) == len(set(written)) == 4
    for path in written:
        loader = load_model if path.parent.name == "models" else load_data
        assert loader(path).name == path.stem


def test_recipe_packaging_config_runs_at_the_end(tmp_path):
    import olive_systems

    model = tiny_onnx(tmp_path / "model")
    recipe = {"input_model": {"type": "OnnxModel", "model_path": str(model)},
              "passes": {"dynamic": {"type": "OnnxDynamicQuantization"}},
              "engine": {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
                         "packaging_config": [{"type": "AzureMLModels", "name": "olive_output_model", "config": {"version": 1}},
                                              {"type": "Zipfile", "name": "packaged"}]}}
    output = olive_systems.run(recipe)
    best = output.get_best_candidate()
    assert (tmp_path / "out" / "azureml" / "models" / "olive_output_model_cpu-cpu_1.yaml").is_file()
    assert (Path(best.model_path).parent / "model_info.json").is_file()
    assert (tmp_path / "out" / "packaged.zip").is_file()  # the seed puts the zip in the output folder



def test_recipe_schema_accepts_azureml_system_and_rejects_unknown_keys(tmp_path):
    from olive_systems.errors import RecipeError
    from olive_systems.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "bert_ptq_azureml.yaml")
    aml = recipe["systems"]["aml"]
    assert aml["type"] == "AzureMLSystem" and aml["compute"] and aml["image"] == "cpu"
    assert recipe["engine"]["target"] == "aml"
    model = tiny_onnx(tmp_path / "model")
    bad = {"input_model": {"type": "OnnxModel", "model_path": str(model)}, "passes": {"d": {"type": "OnnxDynamicQuantization"}},
           "systems": {"aml": {"type": "AzureMLSystem", "compute": "c", "workspace_name": "w", "client_secret": "x"}}}
    with pytest.raises(RecipeError, match="unknown key 'client_secret'"):
        load_recipe(bad)
    del bad["systems"]["aml"]["client_secret"], bad["systems"]["aml"]["compute"]
    with pytest.raises(RecipeError, match="compute"):
        load_recipe(bad)


# ---- AzureML assets as the input model; the hf-token from a key vault ----
# The fakes below stand in for azure-ai-ml's MLClient, azure-storage-blob's ContainerClient and
# azure-keyvault-secrets' SecretClient ONLY because nothing here can reach Azure: each fake does what
# the real client's call does (files laid out as models.download writes them, the SDK's exception types).

WORKSPACE = {"subscription_id": "sub", "resource_group": "group", "workspace_name": "ws", "config_path": None}
AML_SYSTEM = {"type": "AzureMLSystem", "compute": "c", "subscription_id": "sub", "resource_group": "group", "workspace_name": "ws"}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def model_recipe(model_path, **systems) -> dict:
    return {"input_model": {"type": "OnnxModel", "model_path": model_path},
            "passes": {"d": {"type": "OnnxDynamicQuantization"}}, "systems": systems or {"aml": AML_SYSTEM}}


LONG = "azureml://subscriptions/sub/resourcegroups/group/workspaces/other"


@pytest.mark.parametrize("model_path, reference", [
    ({"type": "azureml_model", "name": "bert", "version": "1"}, "azureml:bert:1"),
    ({"type": "azureml_model", "name": "bert", "version": 2}, "azureml:bert:2"),
    ({"type": "azureml_registry_model", "registry_name": "azureml", "name": "bert", "version": "1"},
     "azureml://registries/azureml/models/bert/versions/1"),
    ({"type": "azureml_datastore", "datastore_name": "workspaceblobstore", "relative_path": "/path/to/model_folder/"},
     "azureml://datastores/workspaceblobstore/paths/path/to/model_folder"),
    ({"type": "azureml_model", "name": "bert", "version": "1",
      "azureml_client": {"subscription_id": "sub", "resource_group": "group", "workspace_name": "other"}},
     f"{LONG}/models/bert/versions/1"),
    ({"type": "azureml_datastore", "datastore_name": "ds", "relative_path": "m", "azureml_client": {"config_path": "config.json"}},
     f"{LONG}/datastores/ds/paths/m"),
    ("azureml:bert:1", "azureml:bert:1"),
    ("azureml://registries/azureml/models/bert/versions/1", "azureml://registries/azureml/models/bert/versions/1"),
    ("azureml://datastores/workspaceblobstore/paths/path/to/model_folder",
     "azureml://datastores/workspaceblobstore/paths/path/to/model_folder"),
    ("azureml://subscriptions/sub/resourceGroups/group/workspaces/other/models/bert/versions/1", f"{LONG}/models/bert/versions/1"),
])
def test_recipe_accepts_azureml_model_paths_without_network(model_path, reference, tmp_path, no_network):
    from olive_systems.recipe import load_recipe

    (tmp_path / "config.json").write_text(json.dumps({"subscription_id": "sub", "resource_group": "group", "workspace_name": "other"}))
    recipe = load_recipe(model_recipe(model_path), base_dir=tmp_path)
    assert recipe["input_model"]["model_path"] == reference


@pytest.mark.parametrize("model_path, words, fix", [
    ({"type": "azureml_model", "name": "bert"}, "no pinned version", "pin a version"),
    ({"type": "azureml_registry_model", "registry_name": "azureml", "name": "bert", "version": "latest"}, "no pinned version", "pin a version"),
    ("azureml:bert", "no pinned version", "pin a version"),
    ("azureml:bert@latest", "no pinned version", "pin a version"),
    ("azureml://registries/azureml/models/bert/labels/latest", "no pinned version", "pin a version"),
    ({"type": "azureml_registry_model", "name": "bert", "version": "1"}, "'registry_name' is a required property", "correct the recipe"),
    ({"type": "azureml_model", "name": "bert", "version": "1", "verison": "2"}, "unknown key 'verison'; did you mean 'version'?", None),
    ({"type": "azureml_modle", "name": "bert", "version": "1"}, "did you mean 'azureml_model'?", None),
    ({"type": "azureml_datastore", "datastore_name": "ds"}, "'relative_path' is a required property", None),
    ("azureml://datastores/ds/paths/../up", "not a folder path", "folder's path"),
    ("azureml://somewhere/else", "not an AzureML reference", "azureml:NAME:VERSION"),
])
def test_recipe_rejects_bad_azureml_model_paths(model_path, words, fix, no_network):
    from olive_systems.errors import RecipeError
    from olive_systems.recipe import load_recipe

    with pytest.raises(RecipeError) as info:
        load_recipe(model_recipe(model_path))
    assert "input_model.model_path" in info.value.message and words in info.value.message
    assert fix is None or fix in info.value.fix


def test_only_the_input_model_may_be_an_azureml_resource(tmp_path):
    from olive_systems.errors import RecipeError
    from olive_systems.recipe import load_recipe

    recipe = model_recipe(str(tiny_onnx(tmp_path / "model")))
    recipe["input_model"]["model_script"] = "azureml:script:1"
    with pytest.raises(RecipeError, match="model_script: an AzureML resource can only be input_model.model_path"):
        load_recipe(recipe)


class FakeAzure:
    """MLClient as fetch_remote_model uses it: models.download lays files out as the SDK does
    (<download_path>/<name>/<folder>/... for a folder asset, <download_path>/<name>/<file> for a file asset),
    datastores.get returns the SDK's datastore entity; errors are the SDK's exception types."""

    def __init__(self, assets=None, fail_half_way=False, datastores=None):
        self.assets, self.fail_half_way, self.datastores = assets or {}, fail_half_way, datastores or {}
        self.clients, self.downloads = [], []
        azure = self

        class Client:
            def __init__(self, credential, subscription_id=None, resource_group_name=None, workspace_name=None,
                         registry_name=None):
                azure.clients.append((subscription_id, resource_group_name, workspace_name, registry_name))
                self.models = type("Models", (), {"download": lambda _, **kw: azure.download(registry_name, **kw)})()
                self.datastores = type("Datastores", (), {"get": lambda _, name: azure.datastores[name]})()

        self.MLClient = Client

    def download(self, registry, name, version, download_path):
        from azure.core.exceptions import ResourceNotFoundError, ServiceResponseError

        self.downloads.append((registry, name, version, download_path))
        # A download in progress is in the cache's tmp folder, never where a finished one is looked for.
        assert Path(download_path).parents[1].name == "tmp" and "remote_models" not in download_path
        if (registry, name, version) not in self.assets:
            raise ResourceNotFoundError(message=f"Model container with name: {name} not found.")
        for relative, content in self.assets[(registry, name, version)].items():
            target = Path(download_path) / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            if self.fail_half_way:
                raise ServiceResponseError("Connection broken: IncompleteRead(1024 bytes read, 4096 more expected)")


@pytest.fixture
def fake_azure(monkeypatch):
    import azure.ai.ml
    import azure.identity

    azure_fake = FakeAzure({(None, "bert", "1"): {"bert_folder/model.onnx": b"onnx", "bert_folder/config.json": b"{}"},
                            ("azureml", "bert", "1"): {"model.onnx": b"single file"}})
    monkeypatch.setattr(azure.ai.ml, "MLClient", azure_fake.MLClient)
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda: "credential")
    return azure_fake


def test_remote_model_is_downloaded_once_and_reused_offline(fake_azure, tmp_path, monkeypatch):
    """Mocked MLClient: live Azure cannot be reached from here."""
    import hashlib

    from olive_systems.azureml_assets import fetch_remote_model, job_input_reference

    folder = fetch_remote_model("azureml:bert:1", tmp_path / "cache", WORKSPACE)
    qualified = "azureml://subscriptions/sub/resourcegroups/group/workspaces/ws/models/bert/versions/1"
    assert folder == (tmp_path / "cache" / "remote_models" / hashlib.sha256(qualified.encode()).hexdigest() / "model").resolve()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.onnx"]
    assert fake_azure.clients == [("sub", "group", "ws", None)] and len(fake_azure.downloads) == 1
    assert job_input_reference(folder) == "azureml:bert:1"  # a folder asset: AzureML jobs mount it directly
    assert not list((tmp_path / "cache" / "tmp").iterdir())

    import azure.ai.ml

    def offline(*args, **kwargs):
        raise AssertionError("contacted Azure")

    monkeypatch.setattr(azure.ai.ml, "MLClient", offline)
    import socket

    monkeypatch.setattr(socket.socket, "connect", offline)
    assert fetch_remote_model("azureml:bert:1", tmp_path / "cache", WORKSPACE) == folder
    # The same name in another workspace is another model: never served from this download.
    monkeypatch.setattr(azure.ai.ml, "MLClient", fake_azure.MLClient)
    other = fetch_remote_model("azureml:bert:1", tmp_path / "cache", {**WORKSPACE, "workspace_name": "ws2"})
    assert other != folder and fake_azure.clients[-1] == ("sub", "group", "ws2", None)


def test_registry_model_needs_no_workspace(fake_azure, tmp_path):
    """Mocked MLClient: live Azure cannot be reached from here."""
    from olive_systems.azureml_assets import fetch_remote_model, job_input_reference

    folder = fetch_remote_model("azureml://registries/azureml/models/bert/versions/1", tmp_path, None)
    assert fake_azure.clients == [(None, None, None, "azureml")]
    assert (folder / "model.onnx").read_bytes() == b"single file"
    assert job_input_reference(folder) is None  # a file asset mounts as a file, not as this folder: uploaded instead


def test_download_failing_half_way_leaves_nothing_that_looks_complete(fake_azure, tmp_path):
    """Mocked MLClient (its download breaks after the first file): live Azure cannot be reached from here."""
    from olive_systems.azureml_assets import fetch_remote_model

    fake_azure.fail_half_way = True
    with pytest.raises(OliveSystemsError, match="IncompleteRead"):
        fetch_remote_model("azureml:bert:1", tmp_path, WORKSPACE)
    assert not (tmp_path / "remote_models").exists() or not list((tmp_path / "remote_models").iterdir())
    assert not list((tmp_path / "tmp").iterdir())  # the partial files are gone
    fake_azure.fail_half_way = False
    folder = fetch_remote_model("azureml:bert:1", tmp_path, WORKSPACE)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.onnx"] and len(fake_azure.downloads) == 2


def test_remote_model_errors_name_cause_and_fix(fake_azure, tmp_path, monkeypatch):
    """Mocked MLClient raising the SDK's own exceptions: live Azure cannot be reached from here."""
    from azure.core.exceptions import ClientAuthenticationError

    from olive_systems.azureml_assets import fetch_remote_model

    with pytest.raises(OliveSystemsError) as info:
        fetch_remote_model("azureml:bert:9", tmp_path, WORKSPACE)
    assert "model 'bert' version 9 not found" in info.value.message and "az ml model show -n bert -v 9" in info.value.fix
    with pytest.raises(OliveSystemsError) as info:
        fetch_remote_model("azureml:bert:1", tmp_path, None)
    assert "no workspace is known" in info.value.message and "AzureMLSystem" in info.value.fix
    assert not fake_azure.downloads[1:]

    def no_credential(registry, **kwargs):
        raise ClientAuthenticationError(message="DefaultAzureCredential failed to retrieve a token")

    monkeypatch.setattr(fake_azure, "download", no_credential)
    with pytest.raises(OliveSystemsError, match="authentication failed") as info:
        fetch_remote_model("azureml:bert:1", tmp_path, WORKSPACE)
    assert "az login" in info.value.fix
    assert not (tmp_path / "remote_models").exists()


def test_datastore_folder_downloads_with_the_same_credential(fake_azure, tmp_path, monkeypatch):
    """Mocked MLClient and ContainerClient: live Azure cannot be reached from here."""
    import azure.storage.blob
    from azure.ai.ml.entities import AzureBlobDatastore

    from olive_systems.azureml_assets import fetch_remote_model, job_input_reference

    blobs = {"models/bert/model.onnx": b"onnx", "models/bert/tok/vocab.txt": b"vocab", "models/bert/tok": None,
             "models/bertie/other.bin": b"not this folder"}
    opened = []

    class Container:
        def __init__(self, account_url, container_name, credential):
            opened.append((account_url, container_name, credential))

        def list_blobs(self, name_starts_with, include):
            return [type("Blob", (), {"name": name, "metadata": {"hdi_isfolder": "true"} if data is None else {}})()
                    for name, data in blobs.items() if name.startswith(name_starts_with)]

        def download_blob(self, name):
            return type("Stream", (), {"readinto": lambda _, out: out.write(blobs[name])})()

    monkeypatch.setattr(azure.storage.blob, "ContainerClient", Container)
    fake_azure.datastores["workspaceblobstore"] = AzureBlobDatastore(name="workspaceblobstore", account_name="acct", container_name="data")
    folder = fetch_remote_model("azureml://datastores/workspaceblobstore/paths/models/bert", tmp_path, WORKSPACE)
    assert opened == [("https://acct.blob.core.windows.net", "data", "credential")]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["model.onnx", "tok/vocab.txt"]
    assert job_input_reference(folder) == "azureml://datastores/workspaceblobstore/paths/models/bert"
    with pytest.raises(OliveSystemsError, match="holds no files"):
        fetch_remote_model("azureml://datastores/workspaceblobstore/paths/models/none", tmp_path, WORKSPACE)


def test_workspace_comes_from_the_recipes_azureml_system():
    from olive_systems.azureml_assets import workspace_for

    recipe = {"systems": {"local": {"type": "LocalSystem"}, "aml": AML_SYSTEM}}
    assert workspace_for("azureml:bert:1", recipe)["workspace_name"] == "ws"
    assert workspace_for("azureml://registries/azureml/models/bert/versions/1", recipe) is None
    assert workspace_for(f"{LONG}/models/bert/versions/1", recipe) is None  # it names its own
    assert workspace_for("azureml:bert:1", {"systems": {"local": {"type": "LocalSystem"}}}) is None
    recipe["systems"]["aml2"] = {**AML_SYSTEM, "workspace_name": "ws2"}
    with pytest.raises(OliveSystemsError, match="different workspaces"):
        workspace_for("azureml:bert:1", recipe)


def test_downloaded_asset_is_the_jobs_input_not_an_upload(tmp_path):
    from olive_systems.models import ModelRef

    job = write_pass_job(tmp_path, tiny_onnx(tmp_path / "model").resolve())
    document = json.loads(job.read_text())
    local = document["input_model"]["path"]
    document["input_model"]["source_reference"] = "azureml:bert:1"
    write_json(job, document)
    loaded = load_job(AzureMLSystem(SYSTEM).write_job_yaml(job, tmp_path / "job.yaml"))
    assert loaded.inputs["model"].type == "custom_model" and loaded.inputs["model"].path in ("azureml:bert:1", "bert:1")
    assert f"--map {local}=${{{{inputs.model}}}}" in loaded.command  # the runner sees the mount where the folder was
    ref = ModelRef(type="OnnxModel", path=local, hash="0" * 64, source_reference="azureml:bert:1")
    assert ModelRef.from_dict(ref.to_dict()) == ref
    assert ref.relocated(tmp_path / "out").source_reference is None  # another folder is not that asset


SECRET = "hf_S3cretTokenValue0123456789"


@pytest.fixture
def fake_keyvault(monkeypatch):
    import azure.identity
    import azure.keyvault.secrets

    vault = {"urls": [], "error": None, "value": SECRET}

    class SecretClient:
        def __init__(self, vault_url, credential):
            vault["urls"].append(vault_url)

        def get_secret(self, name):
            if vault["error"] is not None:
                raise vault["error"]
            assert name == "hf-token"
            return type("KeyVaultSecret", (), {"name": name, "value": vault["value"]})()

    monkeypatch.setattr(azure.keyvault.secrets, "SecretClient", SecretClient)
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda: "credential")
    monkeypatch.setenv("OLIVE_SYSTEMS_KEYVAULT", "olive-kv")  # as AzureMLSystem's command job sets it
    monkeypatch.setenv("HF_TOKEN", "unset")
    monkeypatch.delenv("HF_TOKEN")  # restored to its state before the test afterwards
    return vault


def test_keyvault_hf_token_reaches_the_job_and_no_file(job, fake_keyvault, monkeypatch, capfd):
    """Mocked SecretClient: the compute's managed identity and the key vault cannot be reached from here.
    The runner runs as AzureML runs it (python -m olive_systems.runner with OLIVE_SYSTEMS_KEYVAULT set)."""
    from olive_systems.runner import main

    seen = []
    cls = get_pass_class("OnnxDynamicQuantization")
    original = cls.run
    monkeypatch.setattr(cls, "run", lambda self, *args: (seen.append(os.environ.get("HF_TOKEN")), original(self, *args))[1])
    assert main([str(job)]) == 0
    assert seen == [SECRET] and fake_keyvault["urls"] == ["https://olive-kv.vault.azure.net"]
    result = json.loads((job.parent / "result.json").read_text())
    assert result["status"] == "succeeded" and any("key vault 'olive-kv'" in line for line in result["log_tail"])
    written = [p for p in job.parents[2].rglob("*") if p.is_file()]
    assert written and not [p for p in written if SECRET.encode() in p.read_bytes()]
    out, err = capfd.readouterr()
    assert SECRET not in out + err


@pytest.mark.parametrize("error, cause", [
    ("missing", "has no secret 'hf-token'"),
    ("forbidden", "may not read its secrets"),
    ("no identity", "no identity that can sign in"),
])
def test_keyvault_failures_are_one_clear_error(job, fake_keyvault, error, cause):
    """Mocked SecretClient raising the SDK's exception types: no key vault can be reached from here."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    from olive_systems.runner import main

    forbidden = HttpResponseError(message="Caller is not authorized to perform action on resource")
    forbidden.status_code = 403
    fake_keyvault["error"] = {"missing": ResourceNotFoundError(message="A secret with (name/id) hf-token was not found"),
                              "forbidden": forbidden,
                              "no identity": ClientAuthenticationError(message="ManagedIdentityCredential unavailable")}[error]
    assert main([str(job)]) == 1
    result = json.loads((job.parent / "result.json").read_text())
    assert result["error"]["message"].startswith("could not read the Hugging Face token from key vault 'olive-kv': ")
    assert cause in result["error"]["message"]
    assert "az keyvault secret set --vault-name olive-kv --name hf-token" in result["error"]["fix"]
    assert "Key Vault Secrets User" in result["error"]["fix"] and "HF_TOKEN" not in os.environ


def test_a_timing_job_mounts_every_model_and_times_them_side_by_side(tmp_path):
    """A timing job names several models: each becomes an input of its own, mapped in the command, and
    the runner times them all in one process against the mounts."""
    first, second = tiny_onnx(tmp_path / "a").resolve(), tiny_onnx(tmp_path / "b").resolve()
    job_dir = (tmp_path / "jobs" / "job1").resolve()
    job_dir.mkdir(parents=True)
    models = [{"name": name, "model": {"type": "OnnxModel", "path": str(path), "hash": "0" * 64}}
              for name, path in (("first", first), ("second", second))]
    write_json(job_dir / "job.json", {
        "contract_version": CONTRACT_VERSION, "job_id": "job1", "kind": "timing", "models": models,
        "metrics": [{"name": "latency", "type": "latency", "sub_types": [{"name": "p50", "priority": 1}],
                     "metric_config": {"budget_s": 0.2, "warmup_num": 2}}],
        "input_model": models[0]["model"], "accelerator": {"device": "cpu", "execution_provider": "CPUExecutionProvider"},
        "data": {}, "output_dir": str(job_dir / "output"), "timeout_s": 600,
    })
    loaded = load_job(AzureMLSystem(SYSTEM).write_job_yaml(job_dir / "job.json", tmp_path / "job.yaml"))
    assert (loaded.inputs["model"].path, loaded.inputs["model_1"].path) == (str(first), str(second))
    assert f"--map {second}=${{{{inputs.model_1}}}}" in loaded.command
    mounts = tmp_path / "mnt"
    shutil.copytree(job_dir, mounts / "job_dir")
    shutil.copytree(first, mounts / "model")
    shutil.copytree(second, mounts / "model_1")
    (mounts / "result").mkdir()
    command = loaded.command.replace("python ", f"{sys.executable} ", 1)
    for name, target in {"${{inputs.job}}": mounts / "job_dir" / "job.json", "${{inputs.job_dir}}": mounts / "job_dir",
                         "${{inputs.model}}": mounts / "model", "${{inputs.model_1}}": mounts / "model_1",
                         "${{outputs.result}}": mounts / "result"}.items():
        command = command.replace(name, str(target))
    shutil.rmtree(tmp_path / "a")  # only the mounts are there for the job to read
    shutil.rmtree(tmp_path / "b")
    run = subprocess.run(command, shell=True, cwd=loaded.code, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr
    result = json.loads((mounts / "result" / "result.json").read_text())
    assert result["status"] == "succeeded", result["error"]
    assert set(result["metrics"]) == {"first", "second"}, result["metrics"]
    assert all(found["latency-p50"]["value"] > 0 for found in result["metrics"].values())


def test_a_timing_job_without_its_models_is_refused(tmp_path):
    from olive_systems.job import JOB_SCHEMA, JobError

    job = {"contract_version": CONTRACT_VERSION, "job_id": "j", "kind": "timing", "metrics": [],
           "input_model": {"type": "OnnxModel", "path": "/m", "hash": "0" * 64},
           "accelerator": {"device": "cpu", "execution_provider": "CPUExecutionProvider"},
           "data": {}, "output_dir": "/o", "timeout_s": 1}
    with pytest.raises(JobError, match="models"):
        check(job, JOB_SCHEMA, "job")
