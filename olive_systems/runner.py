"""Runs one job anywhere: `python -m olive_systems.runner JOB.json` writes result.json beside it.

The local system calls run_job_file() in process; venv and docker systems run this module as a
process; all of them execute exactly this code.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from .errors import OliveSystemsError
from .job import CONTRACT_VERSION, JOB_SCHEMA, RESULT_SCHEMA, check, load_batches_file, write_json
from .job_output import LINE_CHARS, LOG_FILE, captured_output

RESULT_FILE = "result.json"
KEYVAULT_ENV = "OLIVE_SYSTEMS_KEYVAULT"  # set by AzureMLSystem (keyvault_name): a vault's name, never a secret
HF_TOKEN_SECRET = "hf-token"


class _Tail(logging.Handler):
    def __init__(self, lines: collections.deque):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record):
        self.lines.append(self.format(record))


def run_job_file(job_path: str | Path, on_log=None, keyvault: str | None = None) -> dict:
    """Execute the job, write result.json next to it, return the result. Never raises for job errors.
    keyvault: read the Hugging Face token from this key vault into HF_TOKEN first (see load_hf_token)."""
    import json

    job_path = Path(job_path)
    started = time.perf_counter()
    tail: collections.deque = collections.deque(maxlen=40)
    handler = _Tail(tail)
    logging.getLogger().addHandler(handler)

    def log(message: str) -> None:
        tail.append(message)
        if on_log:
            on_log(message)
        else:
            print(message, flush=True)

    job = {"job_id": "unknown"}
    result = {"contract_version": CONTRACT_VERSION, "status": "failed", "output_model": None, "metrics": None,
              "artifacts": None, "error": None}
    try:
        job = json.loads(job_path.read_text())
        version = job.get("contract_version")
        if version != CONTRACT_VERSION:
            raise OliveSystemsError(f"job contract version {version} is not supported by this runner (it speaks {CONTRACT_VERSION})",
                                    "use the same olive-systems version on the host and in the system (rebuild the image)")
        check(job, JOB_SCHEMA, "job")
        if keyvault:
            load_hf_token(keyvault)
            log(f"runner: HF_TOKEN set from secret '{HF_TOKEN_SECRET}' of key vault '{keyvault}'")
        what = job["pass"]["name"] if job["kind"] == "pass" else f"{len(job['metrics'])} metrics" + (
            f" of {len(job['models'])} models" if job["kind"] == "timing" else "")
        log(f"runner: {job['kind']} job {job['job_id']} ({what}) on {job['accelerator']['execution_provider']}")
        out_dir = Path(job["output_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        with captured_output(job_path.parent / LOG_FILE, log):  # a library's prints: condensed, all in job.log
            result.update(RUNS[job["kind"]](job, out_dir, log))
        result["status"] = "succeeded"
    except OliveSystemsError as exc:
        result["error"] = {"type": type(exc).__name__, "message": exc.message, "fix": exc.fix}
        if exc.__cause__ is not None:  # a library error the pass explained: its traceback too, for --verbose
            _keep_traceback(tail, job_path)
    except Exception as exc:  # a library error inside the job: reported, with its traceback in the tail
        _keep_traceback(tail, job_path)
        detail = str(exc).splitlines()[0][:LINE_CHARS] if str(exc) else ""  # all of it is in job.log
        result["error"] = {"type": type(exc).__name__, "message": f"{type(exc).__name__}: {detail}",
                           "fix": "see the log tail; run with --verbose for the full traceback"}
    finally:
        logging.getLogger().removeHandler(handler)
    result.update(job_id=job.get("job_id", "unknown"), timings={"seconds": round(time.perf_counter() - started, 3)},
                  log_tail=list(tail), runtime=_runtime())
    check(result, RESULT_SCHEMA, "result")
    write_json(job_path.parent / RESULT_FILE, result)
    return result


def _keep_traceback(tail, job_path: Path) -> None:
    """The end of the current exception's traceback in the log tail, all of it in job.log."""
    text = traceback.format_exc()
    tail.extend(text.splitlines()[-12:])
    with contextlib.suppress(OSError):
        with open(job_path.parent / LOG_FILE, "a") as job_log:
            job_log.write(text)


def _runtime() -> dict:
    try:
        import onnxruntime

        from .ort import installed_runtime

        return {"onnxruntime": onnxruntime.__version__, "providers": onnxruntime.get_available_providers(),
                "package": (installed_runtime() or {}).get("package")}
    except ImportError:
        return {}


def load_hf_token(vault_name: str) -> None:
    """Read secret hf-token from the key vault with this machine's identity (on AzureML, the compute's
    managed identity) and set HF_TOKEN in this process's environment only: the value is never written
    to a file, a log, the job or the result."""
    try:
        from azure.identity import DefaultAzureCredential
        from azure.keyvault.secrets import SecretClient
    except ImportError:
        raise OliveSystemsError(f"keyvault_name '{vault_name}' is set, but azure-identity / azure-keyvault-secrets are "
                                "not installed where the job runs",
                                "add azure-identity and azure-keyvault-secrets to the image's requirements, or drop "
                                "keyvault_name") from None
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError, ServiceRequestError

    try:
        secret = SecretClient(vault_url=f"https://{vault_name}.vault.azure.net",
                              credential=DefaultAzureCredential()).get_secret(HF_TOKEN_SECRET)
        value = secret.value
        cause = None if value else f"secret '{HF_TOKEN_SECRET}' is empty"
    except ResourceNotFoundError:
        cause = f"it has no secret '{HF_TOKEN_SECRET}'"
    except ClientAuthenticationError:
        cause = "the job has no identity that can sign in (no managed identity on the compute?)"
    except ServiceRequestError:
        cause = "it cannot be reached (does the key vault exist?)"
    except HttpResponseError as exc:
        status = getattr(exc, "status_code", None)
        cause = "the job's identity may not read its secrets" if status in (401, 403) else f"it answered HTTP {status}"
    if cause:
        raise OliveSystemsError(
            f"could not read the Hugging Face token from key vault '{vault_name}': {cause}",
            f"store the token as secret '{HF_TOKEN_SECRET}' (az keyvault secret set --vault-name {vault_name} "
            f"--name {HF_TOKEN_SECRET} --value <token>) and give the compute's managed identity read access to it "
            "(role 'Key Vault Secrets User', or a get-secrets access policy)")
    os.environ["HF_TOKEN"] = value


def _data(job: dict) -> dict:
    return {name: (entry["config"], load_batches_file(entry["batches"])) for name, entry in job["data"].items()}


def _run_pass(job: dict, out_dir: Path, log) -> dict:
    from .data import for_model
    from .models import ModelRef
    from .passes import get_pass_class
    from .passes.base import Accelerator, PassContext

    data = _data(job)
    spec = job["pass"]
    ctx = PassContext(accelerator=Accelerator(**job["accelerator"]), load_data=lambda name, model: for_model(data[name][1], model),
                      log=lambda message: log(f"{spec['name']}: {message}"))
    model = ModelRef.from_dict(job["input_model"])
    pass_obj = get_pass_class(spec["type"])()
    if model.attributes.get("components"):  # a model of several components: each in turn (composite.py)
        from .composite import run_pass

        output = run_pass(pass_obj, spec["type"], model, spec["config"], out_dir / "model", ctx)
    else:
        output = pass_obj.run(model, spec["config"], out_dir / "model", ctx)
    return {"output_model": output.relocated("model").to_dict()}


def _run_evaluation(job: dict, out_dir: Path, log) -> dict:
    import numpy as np

    from .evaluation.evaluator import evaluate
    from .models import ModelRef

    reference = None
    if job.get("reference"):
        with np.load(job["reference"]) as stored:
            reference = {name: stored[name] for name in stored.files}
    metrics, artifacts = evaluate(ModelRef.from_dict(job["input_model"]), job["metrics"], _data(job),
                                  job["accelerator"]["execution_provider"], reference, job.get("intra_op_threads"), log)
    np.savez(out_dir / "artifacts.npz", **artifacts)
    return {"metrics": metrics, "artifacts": "artifacts.npz"}


def _run_timing(job: dict, out_dir: Path, log) -> dict:
    from .evaluation.timing import time_together
    from .models import ModelRef

    first_feeds = {name: batches.inputs[0] for name, (_, batches) in _data(job).items()}  # cut to each shape
    models = [(entry["name"], ModelRef.from_dict(entry["model"])) for entry in job["models"]]
    return {"metrics": time_together(models, job["metrics"], first_feeds, job["accelerator"]["execution_provider"], log)}


RUNS = {"pass": _run_pass, "evaluation": _run_evaluation, "timing": _run_timing}


def apply_path_map(job_path: Path, mapping: list[tuple[str, str]]) -> Path:
    """Rewrite path prefixes in a job (host folders -> where a remote system mounted them) into a new
    job file in the parent of its output folder, where result.json is written: the job's own folder
    may be a read-only mount."""
    import json

    def rewrite(value):
        if isinstance(value, str):
            for old, new in sorted(mapping, key=lambda pair: -len(pair[0])):  # the longest prefix wins
                if value == old or value.startswith(old.rstrip("/") + "/"):
                    return new.rstrip("/") + value[len(old.rstrip("/")):]
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    job = rewrite(json.loads(Path(job_path).read_text()))
    out_dir = Path(job["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    mapped = out_dir.parent / "job.mapped.json"
    write_json(mapped, job)
    return mapped


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    mapping = []
    while len(args) >= 2 and args[0] == "--map":  # --map OLD=NEW, repeatable: for systems that mount folders elsewhere
        old, sep, new = args[1].partition("=")
        if not sep or not old or not new:
            print(f"error: --map wants OLD=NEW, got {args[1]!r}", file=sys.stderr)
            return 2
        mapping.append((old, new))
        args = args[2:]
    if len(args) != 1:
        print("usage: python -m olive_systems.runner [--map OLD=NEW ...] JOB.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    job_path = apply_path_map(Path(args[0]), mapping) if mapping else args[0]
    result = run_job_file(job_path, keyvault=os.environ.get(KEYVAULT_ENV))
    if result["error"]:
        print(f"error: {result['error']['message']}", file=sys.stderr)
    return 0 if result["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
