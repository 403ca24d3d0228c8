"""The job contract: every pass run and evaluation leaves the engine as a versioned JSON job and
comes back as a JSON result, whichever system runs it (local, venv, docker).

Kinds: `pass` (one pass on input_model), `evaluation` (metrics of input_model) and, since version 2,
`timing` (latency / throughput of several `models` interleaved in one job, each model in a worker
process of its own; the first of them, also given as input_model, is the reference; the result's
metrics map each model's name to its metrics, or to {"error": ...}).

Both schemas are built here and published as schemas/job.schema.json and schemas/result.schema.json.
Pre-processed data travels as .npz files beside the job, so a runner needs no tokenizer or datasets.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from .errors import OliveSystemsError

CONTRACT_VERSION = 2

_ACCELERATOR = {
    "type": "object",
    "properties": {"device": {"type": "string"}, "execution_provider": {"type": "string"}},
    "required": ["device", "execution_provider"],
    "additionalProperties": False,
}
_MODEL = {
    "type": "object",
    "description": "a model folder reference (olive_systems.models.ModelRef)",
    "properties": {
        "type": {"enum": ["HfModel", "OnnxModel", "PyTorchModel"]},
        "path": {"type": "string"},
        "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    "required": ["type", "path", "hash"],
}

JOB_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://olive-systems.dev/schemas/job.schema.json",
    "title": "olive-systems job",
    "type": "object",
    "properties": {
        "contract_version": {"type": "integer", "minimum": 1},
        "job_id": {"type": "string"},
        "kind": {"enum": ["pass", "evaluation", "timing"]},
        "input_model": _MODEL,
        "models": {
            "type": "array",
            "description": "timing: the models timed side by side, the reference (input_model) first",
            "items": {"type": "object", "properties": {"name": {"type": "string"}, "model": _MODEL},
                      "required": ["name", "model"], "additionalProperties": False},
            "minItems": 1,
        },
        "accelerator": _ACCELERATOR,
        "pass": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "type": {"type": "string"}, "config": {"type": "object"}},
            "required": ["name", "type", "config"],
            "additionalProperties": False,
        },
        "metrics": {"type": "array", "items": {"type": "object"}},
        "data": {
            "type": "object",
            "description": "data config name -> its config and the .npz of its pre-processed batches",
            "additionalProperties": {
                "type": "object",
                "properties": {"config": {"type": "object"}, "batches": {"type": "string"}},
                "required": ["config", "batches"],
                "additionalProperties": False,
            },
        },
        "reference": {"type": ["string", "null"], "description": ".npz of the input model's outputs"},
        "output_dir": {"type": "string"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        "intra_op_threads": {"type": ["integer", "null"], "minimum": 1,
                             "description": "threads per ONNX Runtime session of an evaluation that shares the machine "
                                            "with other jobs (its share of the cores); null: the model's own settings"},
    },
    "required": ["contract_version", "job_id", "kind", "input_model", "accelerator", "data", "output_dir", "timeout_s"],
    "allOf": [
        {"if": {"properties": {"kind": {"const": "pass"}}}, "then": {"required": ["pass"]}},
        {"if": {"properties": {"kind": {"const": "evaluation"}}}, "then": {"required": ["metrics"]}},
        {"if": {"properties": {"kind": {"const": "timing"}}}, "then": {"required": ["metrics", "models"]}},
    ],
    "additionalProperties": False,
}

RESULT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://olive-systems.dev/schemas/result.schema.json",
    "title": "olive-systems job result",
    "type": "object",
    "properties": {
        "contract_version": {"type": "integer"},
        "job_id": {"type": "string"},
        "status": {"enum": ["succeeded", "failed"]},
        "output_model": {"oneOf": [_MODEL, {"type": "null"}], "description": "path relative to output_dir"},
        "metrics": {"type": ["object", "null"]},
        "artifacts": {"type": ["string", "null"], "description": ".npz relative to output_dir"},
        "timings": {"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]},
        "log_tail": {"type": "array", "items": {"type": "string"}},
        "error": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}, "fix": {"type": ["string", "null"]}},
                    "required": ["type", "message"],
                    "additionalProperties": False,
                },
            ]
        },
        "runtime": {"type": "object", "description": "onnxruntime version and providers where the job ran"},
    },
    "required": ["contract_version", "job_id", "status", "timings", "log_tail", "error"],
    "additionalProperties": False,
}


class JobError(OliveSystemsError):
    """A job could not run or did not finish: the system, the cause and the last log lines."""

    def __init__(self, message: str, fix: str | None = None, log_tail: list[str] | None = None,
                 log_file: str | None = None):
        super().__init__(message, fix)
        self.log_tail = log_tail or []
        self.log_file = log_file  # the job's whole log (job.log), kept when it failed


def check(document: dict, schema: dict, what: str) -> None:
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "(top level)"
        raise JobError(f"invalid {what}: {where}: {errors[0].message}", "build jobs with olive_systems.job")


def write_json(path: Path, value: dict) -> None:
    """Atomic: a reader sees the whole document or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


def save_batches(batches, path: Path) -> None:
    arrays = {"groups": np.asarray(batches.groups)}
    for index, feed in enumerate(batches.inputs):
        for name, value in feed.items():
            arrays[f"{index}/{name}"] = value
    if batches.targets is not None:
        arrays["targets"] = np.asarray(batches.targets)
    np.savez(path, **arrays)


def load_batches_file(path: str | Path):
    from .data import Batches

    with np.load(path) as stored:
        feeds: dict[int, dict] = {}
        for key in stored.files:
            if "/" in key:
                index, name = key.split("/", 1)
                feeds.setdefault(int(index), {})[name] = stored[key]
        targets = stored["targets"] if "targets" in stored.files else None
        return Batches(inputs=[feeds[i] for i in sorted(feeds)], targets=targets, groups=int(stored["groups"]))


def failed_result(job_id: str, message: str, fix: str | None, log_tail: list[str], seconds: float) -> dict:
    """The result a system reports for a job whose runner never wrote one (crash, kill, timeout)."""
    return {"contract_version": CONTRACT_VERSION, "job_id": job_id, "status": "failed", "output_model": None,
            "metrics": None, "artifacts": None, "timings": {"seconds": round(seconds, 3)}, "log_tail": log_tail[-40:],
            "error": {"type": "JobError", "message": message, "fix": fix}}


# Set when the run is being stopped (Ctrl-C, SIGTERM): a job that ends without a result then was
# interrupted, whatever its exit code says (a stopped container's job reads as killed, 137).
RUN_STOPPING = threading.Event()
KILLED_EXIT_CODES = (137, -9)  # SIGKILL: the OOM killer, or `timeout -k` past the grace period
INTERRUPT_EXIT_CODES = (-2, -15, 130, 143)  # SIGINT, SIGTERM: as a signal, or as a shell reports it


def read_result(job_path: Path, log_tail: list[str], seconds: float, exit_code: int | None, timeout_s: float,
                memory_limit: str | None = None, oom_killed: bool | None = None) -> dict:
    """The runner's result.json, or a result that says why there is none. oom_killed: the system saw
    its OOM killer act (True), or cannot tell (None)."""
    result_path = job_path.parent / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    job_id = job_path.parent.name
    if RUN_STOPPING.is_set() or exit_code in INTERRUPT_EXIT_CODES:
        return failed_result(job_id, f"job interrupted (exit code {exit_code}): the run was stopped",
                             "run again: finished steps come from the cache", log_tail, seconds)
    limit = f" (memory limit {memory_limit})" if memory_limit else ""
    if exit_code in KILLED_EXIT_CODES and oom_killed:
        return failed_result(job_id, f"job was killed out of memory by the OOM killer{limit}",
                             "raise memory_limit of the system", log_tail, seconds)
    # 124: `timeout` stopped it; a kill at or past the timeout: `timeout -k` killed a job that ignored the stop
    if exit_code == 124 or (exit_code in KILLED_EXIT_CODES and seconds >= timeout_s):
        return failed_result(job_id, f"job past its timeout of {timeout_s:g} s was killed", "raise timeout_s of the system",
                             log_tail, seconds)
    if exit_code in KILLED_EXIT_CODES:
        return failed_result(job_id, f"job was killed, most likely out of memory{limit}", "raise memory_limit of the system",
                             log_tail, seconds)
    return failed_result(job_id, f"runner exited with code {exit_code} without a result",
                         "see the log tail; the runner crashed", log_tail, seconds)
