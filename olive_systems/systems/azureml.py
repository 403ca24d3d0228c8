"""AzureMLSystem: each job of the contract runs as an azure-ai-ml command job on AzureML compute.

A job becomes a command job whose inputs are the job JSON (uri_file), the job folder with its .npz
data and user scripts (uri_folder) and the input model (a local folder, or an `azureml:` / registry
reference); its one uri_folder output receives result.json and the output model. The command is
the same runner every system uses, told by `--map` where AzureML mounted the host's folders. The
olive_systems source of this checkout travels as the job's code, so AzureML runs exactly the
host's code (as the docker system does); the image supplies onnxruntime and its pins.

Credentials come from azure-identity (DefaultAzureCredential) and are never written anywhere.
azure.ai.ml is imported inside functions: importing olive_systems stays fast.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import OliveSystemsError
from ..job import failed_result, read_result
from .venv import SOURCE_ROOT

OUTPUT_NAME = "result"
TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding", "Paused"}
INSTALL_FIX = "pip install 'olive-systems[azureml]'"


def azureml_reference(spec: dict) -> str:
    """A model / data reference in a recipe -> the path AzureML resolves:
    {type: azureml_model, name, version}, {type: azureml_registry_model, registry_name, name, version},
    {type: azureml_datastore, datastore_name, relative_path} (see olive_systems.azureml_assets)."""
    from ..azureml_assets import reference_of

    return reference_of(spec)


def _is_reference(path: str) -> bool:
    return path.startswith("azureml:")


def _model_input(path: str):
    from azure.ai.ml import Input

    if path.startswith("azureml://") and "/datastores/" in path:
        return Input(type="uri_folder", path=path)
    if _is_reference(path):  # registered model or registry model
        return Input(type="custom_model", path=path)
    return Input(type="uri_folder", path=path)


def code_snapshot(jobs_root: Path) -> Path:
    """A folder holding only this checkout's olive_systems package: uploaded as the job's code."""
    folder = Path(jobs_root) / "azureml-code"
    shutil.copytree(SOURCE_ROOT / "olive_systems", folder / "olive_systems", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


class AzureMLSystem:
    can_run_torch = False  # the images hold onnxruntime, not torch
    remote = True  # jobs run on their own compute nodes: measurements there never share this machine

    def __init__(self, config: dict, name: str = "azureml_system"):
        self.config, self.name = config, name
        self.client = None
        self.code_dir: Path | None = None

    # ---- what the engine asks without touching Azure ----

    @property
    def image(self) -> str:
        """The full image reference the compute pulls: environment_image, else the images/ tag."""
        from ..images import system_image

        return system_image(self.config, "environment_image")

    def fingerprint(self, packages: tuple) -> dict:
        return {"system": "azureml", "image": self.image}

    def available_providers(self) -> list[str]:
        """The image is built for one EP and checked when it is built, so no Azure call is needed."""
        from ..images import EXECUTION_PROVIDERS

        providers = [EXECUTION_PROVIDERS[self.config.get("image", "cpu")]]
        return providers if providers == ["CPUExecutionProvider"] else [*providers, "CPUExecutionProvider"]

    def workspace(self) -> dict:
        """subscription_id, resource_group, workspace_name from the top level or azureml_client."""
        client = self.config.get("azureml_client") or {}
        found = {key: self.config.get(key) or client.get(key) for key in ("subscription_id", "resource_group", "workspace_name")}
        found["config_path"] = client.get("config_path")
        return found

    # ---- the command job ----

    def command_job(self, job_path: Path, code_dir: Path | None = None):
        """The azure.ai.ml Command for one job of the contract."""
        from azure.ai.ml import Input, Output, command
        from azure.ai.ml.entities import Environment

        job_path = Path(job_path).resolve()
        job_dir = job_path.parent
        job = json.loads(job_path.read_text())
        model_path = job["input_model"]["path"]
        # A model downloaded from a registered asset is mounted from that asset, not uploaded again.
        model_input = job["input_model"].get("source_reference") or model_path
        maps = [(str(job_dir / "output"), f"${{{{outputs.{OUTPUT_NAME}}}}}/output"),
                (str(job_dir), "${{inputs.job_dir}}"),
                (model_path, "${{inputs.model}}")]  # a local folder or an azureml: reference, mounted alike
        others = {f"model_{index}": entry["model"] for index, entry in enumerate(job.get("models", [])[1:], start=1)}
        maps += [(model["path"], f"${{{{inputs.{name}}}}}") for name, model in others.items()]  # timing: models side by side
        arguments = " ".join(f"--map {shlex.quote(old)}={new}" for old, new in maps)
        variables = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        if self.config.get("keyvault_name"):  # a name, never a secret: the runner reads hf-token there with the
            # compute's identity and sets HF_TOKEN in its own process only (olive_systems.runner.load_hf_token)
            variables["OLIVE_SYSTEMS_KEYVAULT"] = self.config["keyvault_name"]
        return command(
            name=None,
            display_name=f"olive-systems {job['kind']} {job['job_id']}",
            experiment_name=self.config.get("experiment_name", "olive-systems"),
            command=f"python -m olive_systems.runner {arguments} ${{{{inputs.job}}}}",
            code=str(code_dir or code_snapshot(job_dir.parent)),
            environment=Environment(image=self.image),
            environment_variables=variables,
            compute=self.config["compute"],
            instance_count=int(self.config.get("instance_count", 1)),
            inputs={"job": Input(type="uri_file", path=str(job_path)),
                    "job_dir": Input(type="uri_folder", path=str(job_dir)),
                    "model": _model_input(model_input),
                    **{name: _model_input(model.get("source_reference") or model["path"]) for name, model in others.items()}},
            outputs={OUTPUT_NAME: Output(type="uri_folder", mode="rw_mount")},
            timeout=int(job.get("timeout_s", self.config.get("timeout_s", 3600))),
        )

    def write_job_yaml(self, job_path: Path, dest: Path, code_dir: Path | None = None) -> Path:
        """The command job as the SDK serializes it: what `az ml job create -f` takes."""
        import yaml

        node = self.command_job(job_path, code_dir)
        document = json.loads(json.dumps(node._to_job()._to_dict(), default=str))
        for name, entry in document.get("inputs", {}).items():
            given = node.inputs[name]._data.path
            if not _is_reference(given):  # the SDK writes local paths as asset ids (azureml:/...): undo that
                entry["path"] = given
        dest = Path(dest)
        dest.write_text(yaml.safe_dump(document, sort_keys=False))
        return dest

    # ---- live ----

    def start(self, mounts: dict) -> None:
        try:
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise OliveSystemsError("azure-ai-ml is not installed", INSTALL_FIX) from None
        where = self.workspace()
        credential = DefaultAzureCredential()
        try:
            if where["config_path"] and not where["workspace_name"]:
                self.client = MLClient.from_config(credential, path=where["config_path"])
            else:
                missing = [k for k in ("subscription_id", "resource_group", "workspace_name") if not where[k]]
                if missing:
                    raise OliveSystemsError(f"system '{self.name}': no {', '.join(missing)}",
                                            "give subscription_id, resource_group and workspace_name (or azureml_client.config_path)")
                self.client = MLClient(credential, where["subscription_id"], where["resource_group"], where["workspace_name"])
        except OliveSystemsError:
            raise
        except Exception as exc:
            raise map_failure(exc) from None
        self.code_dir = code_snapshot(Path(mounts["jobs"]))

    def submit(self, job_path: Path) -> str:
        try:
            return self.client.jobs.create_or_update(self.command_job(job_path, self.code_dir)).name
        except Exception as exc:
            raise map_failure(exc) from None

    def wait(self, name: str, job_path: Path, timeout_s: float, on_log) -> dict:
        """Poll the job, stream its status changes, download its output into the job folder."""
        started, status = time.perf_counter(), None
        tail: list[str] = []

        def log(line: str) -> None:
            tail.append(line)
            on_log(line)

        while True:
            try:
                submitted = self.client.jobs.get(name)
            except Exception as exc:
                raise map_failure(exc) from None
            if submitted.status != status:
                status = submitted.status
                log(f"azureml job {name}: {status}" + (f" ({submitted.studio_url})" if status == "Queued" else ""))
            if status in TERMINAL:
                break
            if time.perf_counter() - started > timeout_s:
                self.client.jobs.begin_cancel(name)
                return read_result(job_path, tail, time.perf_counter() - started, 124, timeout_s)
            time.sleep(float(self.config.get("poll_s", 10)))
        seconds = time.perf_counter() - started
        # A runner that reports a failed job exits 1, so a Failed job may still hold the runner's result.json.
        fetched = self._download(name, Path(job_path).parent) if status in ("Completed", "Failed") else None
        if fetched is None:
            error = map_failure(submitted)
            return failed_result(Path(job_path).parent.name, error.message, error.fix, tail, seconds)
        return read_result(job_path, tail, seconds, 0, timeout_s)

    def _download(self, name: str, job_dir: Path) -> Path | None:
        """The job's output (result.json and output/) moved into the job folder; None if it has no result."""
        with tempfile.TemporaryDirectory() as scratch:
            try:
                self.client.jobs.download(name, download_path=scratch, output_name=OUTPUT_NAME)
            except Exception:  # a job that died before writing its output has nothing to download
                return None
            fetched = next(Path(scratch).rglob("result.json"), None)
            if fetched is None:
                return None
            for item in fetched.parent.iterdir():
                if item.name != "job.mapped.json" and not (job_dir / item.name).exists():
                    shutil.move(str(item), job_dir / item.name)
        return job_dir / "result.json"

    def run_job(self, job_path: Path, timeout_s: float, on_log) -> dict:
        return self.wait(self.submit(job_path), job_path, timeout_s, on_log)


    def stop(self) -> None:
        self.client = None


# Known failure causes: words in AzureML's message -> (what happened, the fix).
FAILURES = [
    (("quota", "QuotaExceeded", "not enough quota"), "AzureML compute quota is exhausted",
     "request more quota for the VM family or use a smaller compute / instance_count"),
    (("ImagePull", "pull access denied", "manifest unknown", "image not found", "failed to pull"),
     "AzureML could not pull the job's image", "push the image to the workspace's container registry and set environment_image"),
    (("UserError", "Execution failed", "exited with"), "the job failed inside AzureML (user error)",
     "see the job's std_log in AzureML studio; the log tail shows the runner's error"),
]


def map_failure(failure) -> OliveSystemsError:
    """An azure-ai-ml / azure-core exception, or a finished Job, -> one error with a clear fix."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    if isinstance(failure, ClientAuthenticationError):
        return OliveSystemsError("AzureML authentication failed (DefaultAzureCredential found no usable credential)",
                                 "run `az login`, or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET in the environment")
    if isinstance(failure, ResourceNotFoundError):
        return OliveSystemsError(f"AzureML resource not found: {_first_line(failure)}",
                                 "check subscription_id, resource_group, workspace_name, compute and asset names")
    status = getattr(failure, "status", None) if not isinstance(failure, Exception) else None
    if status == "Canceled":
        return OliveSystemsError("the AzureML job was cancelled", "run again; check who cancelled it in AzureML studio")
    text = str(failure) if isinstance(failure, Exception) else json.dumps(getattr(failure, "error", None) or {}, default=str)
    for words, message, fix in FAILURES:
        if any(word.lower() in text.lower() for word in words):
            return OliveSystemsError(f"{message}: {_first_line(text)}" if isinstance(failure, Exception) else message, fix)
    if isinstance(failure, HttpResponseError):
        return OliveSystemsError(f"AzureML request failed: {_first_line(failure)}", "see the message; check the workspace settings")
    if status is not None:
        return OliveSystemsError(f"the AzureML job ended {status}", "see the job's logs in AzureML studio")
    return OliveSystemsError(f"AzureML error: {_first_line(failure)}", "see the message")


def _first_line(value) -> str:
    lines = str(value).strip().splitlines()
    return lines[0][:300] if lines else type(value).__name__
