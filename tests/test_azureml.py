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
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
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


def test_independent_jobs_are_submitted_before_any_wait(tmp_path):
    paths = [write_pass_job(tmp_path / str(i), tiny_onnx(tmp_path / str(i) / "model").resolve()) for i in range(3)]
    jobs = FakeJobs(["Completed"], runner_result())
    submitted_at_first_get = []
    original_get = jobs.get
    jobs.get = lambda name: (submitted_at_first_get.append(len(jobs.submitted)), original_get(name))[1]
    results = started_system(jobs, paths[0]).run_jobs(paths, 60, lambda line: None)
    assert [r["status"] for r in results] == ["succeeded"] * 3 and submitted_at_first_get[0] == 3


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
    assert (tmp_path / "out" / "azureml" / "olive_output_model_cpu-cpu_1.yaml").is_file()
    assert (Path(best.model_path).parent / "model_info.json").is_file()
    assert (tmp_path / "packaged.zip").is_file()



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
