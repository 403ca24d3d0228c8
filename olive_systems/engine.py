"""The engine: runs each pass flow through the cache, evaluates every candidate, ranks and writes.

Every pass run and every evaluation is keyed by a full sha256 of what determines its result, so a
re-run of the same recipe computes nothing and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import data as data_mod
from .cache import LocalCache, make_key
from .errors import OliveSystemsError, PassError
from .job import CONTRACT_VERSION, RESULT_SCHEMA, JobError, check, save_batches, write_json
from .models import ModelRef, folder_sha256
from .output import WorkflowOutput
from .output_dir import check_output_dir, write_output_dir
from .passes import get_pass_class
from .passes.base import Accelerator
from .ranking import goals_of, rank
from .systems import make_system


class Engine:
    def __init__(self, recipe: dict, on_event: Callable[[dict], None] | None = None):
        self.recipe = recipe
        self.engine = recipe["engine"]
        self.on_event = on_event or (lambda event: None)
        self.cache = LocalCache(Path(self.engine["cache_dir"]), warn=lambda msg: self.emit("warning", msg),
                                remote=self._shared_cache())
        self.systems = {name: make_system(cfg, name) for name, cfg in recipe["systems"].items()}
        self._started_systems: list = []
        target = recipe["systems"][self.engine["target"]]
        self.accelerators = [Accelerator(acc["device"], ep) for acc in target.get("accelerators", [{"device": "cpu"}])
                             for ep in acc.get("execution_providers", ["CPUExecutionProvider"])]
        evaluator = self.engine.get("evaluator")
        self.metrics = recipe["evaluators"][evaluator]["metrics"] if evaluator else []
        self.steps: list[dict] = []
        self._memo: dict[str, tuple[ModelRef, bool]] = {}
        self._pending: dict[str, tuple] = {}  # entry folder -> (shared entry not yet downloaded, recompute)
        self._data_cache: dict = {}
        self._fingerprints: dict[str, str] = {}

    def _shared_cache(self):
        shared = self.engine.get("shared_cache")
        if not shared:
            return None
        from .cache.blob import DEFAULT_CONNECTION_ENV, BlobRemote

        return BlobRemote(shared["container_name"], shared.get("account_name"),
                          shared.get("connection_string_env", DEFAULT_CONNECTION_ENV))

    def emit(self, kind: str, name: str, **fields) -> None:
        self.on_event({"kind": kind, "name": name, **fields})

    # ---- the run ----

    def run(self) -> WorkflowOutput:
        check_output_dir(Path(self.engine["output_dir"]).resolve())
        if self.engine["clean_cache"]:
            self.cache.clear()
        self.cache.sweep()
        input_model = self._input_model()
        self._input_folder = Path(input_model.path)
        try:
            return self._run_all(input_model)
        finally:
            for system in self._started_systems:
                system.stop()

    def _run_all(self, input_model: ModelRef) -> WorkflowOutput:
        accelerators = self.accelerators
        candidates, failures, input_metrics = [], [], None
        for accelerator in accelerators:
            reference = None
            if self.metrics and self.engine["evaluate_input_model"]:
                input_metrics, reference, _ = self._evaluate("input model", input_model, accelerator, None)
            for flow in self.recipe["pass_flows"]:
                flow_id = "-".join(flow) + (f"_{accelerator.short}" if len(accelerators) > 1 else "")
                try:
                    model, history = self._run_flow(flow, input_model, accelerator)
                    metrics = self._evaluate(flow_id, model, accelerator, reference)[0] if self.metrics else {}
                except OliveSystemsError as exc:
                    failures.append({"model_id": flow_id, "error": exc.message, "fix": exc.fix,
                                     "log_tail": getattr(exc, "log_tail", []),
                                     "device": accelerator.device, "execution_provider": accelerator.execution_provider})
                    self.emit("failed", flow_id, error=str(exc))
                    continue
                candidates.append({"model_id": flow_id, "model": model, "history": history, "metrics": metrics,
                                   "device": accelerator.device, "execution_provider": accelerator.execution_provider})
        for candidate in candidates:  # a candidate from the shared cache is downloaded now, for the output
            self._guarded(f"fetching {candidate['model_id']}", lambda: self._materialize(candidate["model"]))
        ranked = rank(candidates, goals_of(self.metrics), input_metrics)
        output_dir = Path(self.engine["output_dir"]).resolve()
        summary = {"input_model_metrics": input_metrics, "failures": failures, "steps": self.steps}
        output = write_output_dir(output_dir, ranked, summary)
        if self.engine.get("packaging_config"):
            self._package(output, output_dir)
        return output

    def _package(self, output: WorkflowOutput, output_dir: Path) -> None:
        """Register assets through a started AzureML system's workspace; without one, write their YAML."""
        from .packaging import package

        client = next((getattr(s, "client", None) for s in self._started_systems if getattr(s, "client", None)), None)
        for path in self._guarded("packaging", lambda: package(output, self.engine["packaging_config"], output_dir, client)):
            self.emit("log", "packaging", message=f"wrote {path}")

    def _input_model(self) -> ModelRef:
        spec = self.recipe["input_model"]
        path = Path(spec["model_path"])
        folder = path if path.is_dir() else path.parent
        # The model script and io config shape the export, so they are part of the model's identity.
        extra = json.dumps({k: spec.get(k) for k in ("io_config", "dummy_inputs_func", "task")}, sort_keys=True).encode()
        if spec.get("model_script"):
            extra += Path(spec["model_script"]).read_bytes()
        model = ModelRef(
            type=spec["type"], path=str(folder), hash="", task=spec.get("task"), model_script=spec.get("model_script"),
            io_config=spec.get("io_config"), dummy_inputs_func=spec.get("dummy_inputs_func"),
            inference_settings=spec.get("inference_settings"),
        )
        if spec["type"] == "OnnxModel" and path.is_file() and path.name != "model.onnx":
            raise OliveSystemsError(f"input_model.model_path: ONNX model files must be named model.onnx ({path.name})",
                                    "point model_path at the folder holding model.onnx, or rename the file")
        model.hash = folder_sha256(folder, extra)
        return model

    def _run_flow(self, flow: list[str], model: ModelRef, accelerator: Accelerator) -> tuple[ModelRef, list[dict]]:
        history, parent_id = [], f"input_model-{model.hash[:8]}"
        for index, pass_name in enumerate(flow):
            entry = self.recipe["passes"][pass_name]
            model, step = self._run_pass(pass_name, entry, model, accelerator)
            model_id = f"{index}_{entry['type']}-{step['key'][:8]}"
            history.append({"model_id": model_id, "parent_model_id": parent_id, "pass": pass_name, "type": entry["type"],
                            **step})
            parent_id = model_id
        return model, history

    def _run_pass(self, pass_name: str, entry: dict, model: ModelRef, accelerator: Accelerator):
        pass_cls = get_pass_class(entry["type"])
        config = pass_cls.resolve_config(entry.get("config"))
        if model.type not in pass_cls.input_types:
            raise PassError(f"pass '{pass_name}' ({entry['type']}) takes {'/'.join(pass_cls.input_types)}, got {model.type}",
                            "order pass_flows so a conversion comes first")
        key = make_key({
            "kind": "pass",
            "input": model.hash,
            "inference_settings": model.inference_settings,
            "type": entry["type"],
            "config": config,
            "data": {name: self._fingerprint(name)
                     for name in [config.get("data_config")] if name},
            "accelerator": accelerator.to_dict() if pass_cls.accelerator_dependent else None,
            "system": self.systems[entry.get("host") or self.engine["host"]].fingerprint(pass_cls.depends_on),
        })
        if key in self._memo:
            result, cached = self._memo[key]
            return result, {"config": config, "key": key, "cached": cached, "seconds": 0.0}
        started = time.perf_counter()
        system_name = entry.get("host") or self.engine["host"]
        job = {"kind": "pass", "pass": {"name": pass_name, "type": entry["type"], "config": config}}
        data_names = [config["data_config"]] if config.get("data_config") else []

        def build(folder: Path) -> dict:
            result, job_dir = self._dispatch(system_name, job, model, accelerator, data_names, None, pass_name)
            os.rename(job_dir / "output" / result["output_model"]["path"], folder / "model")
            shutil.rmtree(job_dir, ignore_errors=True)
            return {"model": result["output_model"], "pass": pass_name, "type": entry["type"],
                    "seconds": round(time.perf_counter() - started, 3), "system": system_name}

        def compute():
            self.emit("start", pass_name, step="pass")
            return self._guarded(f"pass '{pass_name}'", lambda: self.cache.put("runs", key, build))

        hit = self.cache.get("runs", key)
        cached = hit is not None
        if not cached:
            hit = compute()
        elif hit.pending:  # a shared entry: its files are fetched only if something needs them
            self._pending[str(hit.path)] = (hit, compute)
        result = ModelRef.from_dict(hit.meta["model"])
        result = result.relocated(hit.path / result.path)
        seconds = round(time.perf_counter() - started, 3)
        self._memo[key] = (result, cached)
        self.steps.append({"step": "pass", "name": pass_name, "key": key, "cached": cached, "source": hit.source,
                           "seconds": seconds})
        self.emit("cached" if cached else "done", pass_name, step="pass", seconds=seconds, source=hit.source)
        return result, {"config": config, "key": key, "cached": cached, "seconds": seconds}

    # ---- jobs ----

    def _system(self, name: str):
        system = self.systems[name]
        if system not in self._started_systems:
            mounts = {"cache": self.cache.root.resolve(), "jobs": self._jobs_root(), "input": self._input_folder}
            self._started_systems.append(system)  # stopped at the end even if its start fails half-way
            self._guarded(f"starting system '{name}'", lambda: system.start(mounts))
            wanted = {ep for acc in self.recipe["systems"][name].get("accelerators", [])
                      for ep in acc.get("execution_providers", [])}
            if name == self.engine["target"]:
                wanted |= {acc.execution_provider for acc in self.accelerators}
            available = self._guarded(f"probing system '{name}'", system.available_providers)
            missing = sorted(wanted - set(available))
            if missing:
                raise OliveSystemsError(f"system '{name}' lacks {missing} (it has {available})",
                                        "use the image / environment built for that execution provider")
        return system

    def _jobs_root(self) -> Path:
        root = (self.cache.root / "jobs").resolve()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _dispatch(self, system_name: str, job: dict, model: ModelRef, accelerator: Accelerator,
                  data_names: list[str], reference: dict | None, label: str) -> tuple[dict, Path]:
        """Write a job (data as .npz, user scripts copied in), run it on a system, check its result."""
        self._materialize(model)
        system = self._system(system_name)
        job_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self._jobs_root()))
        data = {}
        for name in data_names:
            config = self._portable(self.recipe["data_configs"][name], job_dir)
            save_batches(self._load_data(name, model), job_dir / f"data-{name}.npz")
            data[name] = {"config": config, "batches": str(job_dir / f"data-{name}.npz")}
        if reference is not None:
            np.savez(job_dir / "reference.npz", **{k: v for k, v in reference.items() if k != "__key__"})
        if "metrics" in job:
            job = dict(job, metrics=[self._portable(metric, job_dir) for metric in job["metrics"]])
        timeout = float(self.recipe["systems"][system_name].get("timeout_s", 3600))
        document = {"contract_version": CONTRACT_VERSION, "job_id": job_dir.name, **job, "input_model": model.to_dict(),
                    "accelerator": accelerator.to_dict(), "data": data,
                    "reference": str(job_dir / "reference.npz") if reference is not None else None,
                    "output_dir": str(job_dir / "output"), "timeout_s": timeout}
        write_json(job_dir / "job.json", document)
        result = system.run_job(job_dir / "job.json", timeout, lambda line: self.emit("log", label, message=line))
        check(result, RESULT_SCHEMA, "result")
        if result["status"] != "succeeded":
            shutil.rmtree(job_dir, ignore_errors=True)
            error = result["error"] or {"message": "job failed", "fix": None}
            raise JobError(f"{error['message']} [on {system_name}]", error.get("fix"), result["log_tail"])
        return result, job_dir

    @staticmethod
    def _portable(config: dict, job_dir: Path) -> dict:
        """A copy of a config whose user scripts are copied into the job folder (every system sees it)."""
        config = json.loads(json.dumps(config))
        holders = [config, config.get("user_config") or {}]
        for holder in holders:
            script = holder.get("user_script")
            if script:
                target = job_dir / "scripts" / f"{hashlib.sha256(script.encode()).hexdigest()[:12]}_{Path(script).name}"
                target.parent.mkdir(exist_ok=True)
                shutil.copy2(script, target)
                holder["user_script"] = str(target)
        return config

    @staticmethod
    def _guarded(what: str, work: Callable):
        """Turn an unexpected library error into a PassError so the run records it and goes on."""
        try:
            return work()
        except OliveSystemsError:
            raise
        except Exception as exc:
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise PassError(f"{what} failed: {type(exc).__name__}: {detail}", "run with --verbose for the traceback") from exc

    def _materialize(self, model: ModelRef) -> None:
        """Make sure a model's files are here: download a shared entry, or recompute it if it is corrupt."""
        for folder in [f for f in self._pending if model.path == f or model.path.startswith(f + os.sep)]:
            entry, recompute = self._pending.pop(folder)
            if not self.cache.materialize(entry):
                recompute()
                for step in self.steps:
                    if step["key"] == entry.key:
                        step.update(cached=False, source="computed")

    def _fingerprint(self, name: str) -> str:
        """A data config's content hash, read once per run however many keys use it."""
        if name not in self._fingerprints:
            self._fingerprints[name] = data_mod.fingerprint(self.recipe["data_configs"][name])
        return self._fingerprints[name]

    def _load_data(self, name: str, model: ModelRef):
        """Tokenized batches of a data config for a model, made here on the host (memoized)."""
        key = (name, model.path)
        self._materialize(model)
        if key not in self._data_cache:
            self._data_cache[key] = data_mod.load_batches(self.recipe["data_configs"][name], Path(model.path))
        return self._data_cache[key]

    def _evaluation_system(self, model: ModelRef) -> str:
        if model.type == "HfModel" and not self.systems[self.engine["target"]].can_run_torch:
            return self.engine["host"]  # torch models are evaluated where torch is
        return self.engine["target"]

    def _evaluate(self, label: str, model: ModelRef, accelerator: Accelerator, reference: dict | None):
        """Returns (metrics, reference artifacts, cached)."""
        used = sorted({m["data_config"] for m in self.metrics if m.get("data_config")})
        key = make_key({
            "kind": "evaluation",
            "model": model.hash,
            "model_type": model.type,
            "inference_settings": model.inference_settings,
            "metrics": self.metrics,
            "data": {name: self._fingerprint(name) for name in used},
            "accelerator": accelerator.to_dict(),
            "reference": reference.get("__key__") if reference else None,
            "system": self.systems[self._evaluation_system(model)].fingerprint(("onnxruntime", "torch", "transformers")),
        })
        started = time.perf_counter()
        hit = self.cache.get("evaluations", key)
        if hit is not None and hit.pending and not self.cache.materialize(hit):
            hit = None  # a corrupt shared evaluation: evaluate again
        cached = hit is not None
        if not cached:
            self.emit("start", label, step="evaluation")
            system_name = self._evaluation_system(model)

            def build(folder: Path) -> dict:
                result, job_dir = self._dispatch(system_name, {"kind": "evaluation", "metrics": self.metrics}, model,
                                                 accelerator, used, reference, label)
                os.rename(job_dir / "output" / result["artifacts"], folder / "artifacts.npz")
                shutil.rmtree(job_dir, ignore_errors=True)
                return {"metrics": result["metrics"], "model": label, "system": system_name}

            hit = self._guarded(f"evaluation of {label}", lambda: self.cache.put("evaluations", key, build))
        with np.load(hit.path / "artifacts.npz") as stored:
            artifacts = {name: stored[name] for name in stored.files}
        artifacts["__key__"] = key
        seconds = round(time.perf_counter() - started, 3)
        self.steps.append({"step": "evaluation", "name": label, "key": key, "cached": cached, "source": hit.source,
                           "seconds": seconds})
        self.emit("cached" if cached else "done", label, step="evaluation", seconds=seconds, source=hit.source,
                  metrics={k: v["value"] for k, v in hit.meta["metrics"].items()})
        return hit.meta["metrics"], artifacts, cached
