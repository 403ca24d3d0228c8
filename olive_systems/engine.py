"""The engine: searches each pass flow on each accelerator, evaluates every candidate, ranks and writes.

Every pass run and every evaluation is keyed by a full sha256 of what determines its result, so a
re-run of the same recipe computes nothing and says so. Jobs run side by side up to
engine.max_concurrency; a measurement (latency, throughput, session tuning) on this machine waits
until it has the machine to itself (MachineLock). The candidates' latency and throughput, which
rank them, are timed last, all candidates together in one job per system (_time_together): jobs
minutes apart on a drifting machine would compare different machines. The input model is timed
on its own, once: its figure does not change when a candidate is added.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import data as data_mod
from .cache import LocalCache, make_key
from .concurrency import MachineLock, SingleFlight
from .errors import OliveSystemsError, PassError, SystemUnavailable
from .evaluation.metrics import TIMING_METRICS
from .evaluation.timing import SIDE_BY_SIDE_METRICS
from .measure import progress_text
from .job import CONTRACT_VERSION, RESULT_SCHEMA, RUN_STOPPING, JobError, check, save_batches, write_json
from .job_output import LOG_FILE
from .models import ModelRef, folder_sha256
from .ort import served_provider
from .output import WorkflowOutput
from .output_dir import check_output_dir, write_output_dir
from .passes import get_pass_class
from .passes.base import Accelerator
from .ranking import goals_of, missed_goals, rank, rank_shapes, sort_key
from .search import Search
from .systems import make_system


# Metrics that compare a candidate with the input model's outputs.
REFERENCE_METRICS = ("fidelity", "greedy_agreement")


@dataclass
class Target:
    """An accelerator and the system its EP-dependent passes and evaluations run on."""

    accelerator: Accelerator
    system: str
    index: int

    def label(self, name: str, several: bool) -> str:
        return f"{name}_{self.accelerator.short}" if several else name


class Engine:
    def __init__(self, recipe: dict, on_event: Callable[[dict], None] | None = None):
        self.recipe = recipe
        self.engine = recipe["engine"]
        self.on_event = on_event or (lambda event: None)
        self.cache = LocalCache(Path(self.engine["cache_dir"]), warn=lambda msg: self.emit("warning", msg),
                                remote=self._shared_cache())
        self.systems = {name: make_system(cfg, name) for name, cfg in recipe["systems"].items()}
        self._started_systems: list = []
        targets = self.engine["target"] if isinstance(self.engine["target"], list) else [self.engine["target"]]
        pairs = [(Accelerator(acc["device"], ep), name) for name in targets
                 for acc in recipe["systems"][name].get("accelerators", [{"device": "cpu"}])
                 for ep in acc.get("execution_providers", ["CPUExecutionProvider"])]
        self.targets = [Target(accelerator, name, index) for index, (accelerator, name) in enumerate(pairs)]
        self.several = len(self.targets) > 1
        evaluator = self.engine.get("evaluator")
        self.metrics = recipe["evaluators"][evaluator]["metrics"] if evaluator else []
        # Timed together at the end; a model of several components is timed component by component, alone.
        self.side_by_side = [] if recipe["input_model"].get("components") else \
            [m for m in self.metrics if m["type"] in SIDE_BY_SIDE_METRICS]
        self.steps: list[dict] = []
        self.jobs: list[dict] = []  # when each job ran, where, and whether it measured
        self._started = time.perf_counter()
        self._started_wall = time.time()  # the machine lock records epoch seconds
        self._memo: dict[str, tuple[ModelRef, bool]] = {}
        self._failed: dict[str, OliveSystemsError] = {}  # pass runs that failed in this run: not tried again
        self._pending: dict[str, tuple] = {}  # entry folder -> (shared entry not yet downloaded, recompute)
        self._data_cache: dict = {}
        self._fingerprints: dict[str, str] = {}
        # Jobs run on pool threads: these keep shared state and the machine orderly.
        self._lock = threading.RLock()
        self.machine_use: list[dict] = []  # who held this machine when, shared or alone
        self.machine = MachineLock(self.cache.root / "jobs" / "machine.lock", self.engine["max_concurrency"],
                                   self._record_machine_use)
        # Each step computed once across this run's candidates and every run sharing the cache.
        self.flights = SingleFlight(self.cache.root / "locks", on_wait=lambda key, pid: self.emit(
            "log", "cache", message=f"waiting for run {pid or '?'} to finish step {key[:12]} (reused, not recomputed)"))
        self._slots = {name: threading.Semaphore(getattr(system, "max_parallel_jobs", 1 << 30))
                       for name, system in self.systems.items()}

    def _shared_cache(self):
        shared = self.engine.get("shared_cache")
        if not shared:
            return None
        from .cache.blob import DEFAULT_CONNECTION_ENV, BlobRemote

        return BlobRemote(shared["container_name"], shared.get("account_name"),
                          shared.get("connection_string_env", DEFAULT_CONNECTION_ENV))

    def emit(self, kind: str, name: str, **fields) -> None:
        with self._lock:
            self.on_event({"kind": kind, "name": name, **fields})

    # ---- the run ----

    def run(self) -> WorkflowOutput:
        check_output_dir(Path(self.engine["output_dir"]).resolve())
        if self.engine.get("packaging_config"):  # what packaging will need is checked before any work
            from .packaging import check_packaging

            check_packaging(self.engine["packaging_config"])
        if self.engine["clean_cache"]:
            self.cache.clear()
        self.cache.sweep()
        input_model = self._input_model()
        self._input_folder = Path(input_model.path)
        try:
            return self._run_all(input_model)
        finally:
            self._stop_systems()

    def _run_all(self, input_model: ModelRef) -> WorkflowOutput:
        with ThreadPoolExecutor(self._in_flight(), thread_name_prefix="olive-job") as pool:
            try:
                baselines, input_failures = self._evaluate_input(pool, input_model)
                candidates, failures = self._search(pool, input_model, baselines)
                failures += self._time_together(candidates)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM: the jobs ended now were interrupted, not killed
                    RUN_STOPPING.set()
                self._stop_systems()  # ends running jobs, so the pool drains at once
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        for candidate in candidates:  # a candidate from the shared cache is downloaded now, for the output
            self._guarded(f"fetching {candidate['model_id']}", lambda: self._materialize(candidate["model"]))
        input_metrics = baselines[0][0] if baselines else None
        ranked = rank(candidates, goals_of(self.metrics), input_metrics)
        rank_shapes(ranked)  # with a workload: each candidate's rank at each shape alone
        output_dir = Path(self.engine["output_dir"]).resolve()
        failures = input_failures + failures
        summary = {"input_model_metrics": input_metrics, "failures": failures, "steps": self.steps, "jobs": self.jobs,
                   "machine_use": sorted(self.machine_use, key=lambda use: use["start_s"])}
        if self.several:
            summary["input_model_metrics_by_accelerator"] = {t.accelerator.short: baselines[t.index][0] for t in self.targets}
        output = write_output_dir(output_dir, ranked, summary)
        if self.engine.get("packaging_config"):
            self._package(output, output_dir)
        return output

    def _evaluate_input(self, pool: ThreadPoolExecutor, input_model: ModelRef) -> tuple[list[tuple], list[dict]]:
        """(metrics, reference) of the input model per target: what goals and fidelity compare against; and
        the failure records of the targets where it failed (the run goes on, reference None)."""
        if not (self.metrics and self.engine["evaluate_input_model"]):
            return [(None, None)] * len(self.targets), []
        labels = [target.label("input model", self.several) for target in self.targets]
        futures = [pool.submit(self._evaluate, label, input_model, target, None, side_by_side=False)
                   for label, target in zip(labels, self.targets)]
        baselines, failures = [], []
        for label, target, future in zip(labels, self.targets, futures):
            try:
                baselines.append(future.result()[:2])
            except SystemUnavailable:
                raise
            except OliveSystemsError as exc:  # recorded; the candidates are still made and evaluated, without it
                failures.append(self._failure(label, "evaluation", exc, target.accelerator, {}))
                baselines.append((None, None))
                left_out = [m["name"] for m in self.metrics if m["type"] in REFERENCE_METRICS]
                if left_out:
                    self.emit("warning", f"{label}: no outputs to compare with, so the candidates are scored without "
                                         f"{', '.join(left_out)}")
        return baselines, failures

    def _search(self, pool: ThreadPoolExecutor, input_model: ModelRef, baselines: list[tuple]):
        """Ask every search for trials while there is room, run them on the pool, tell the results back."""
        goals = goals_of(self.metrics)
        timed_goals = any("goal" in sub for metric in self.side_by_side for sub in metric["sub_types"])
        searches = [(Search(flow, self.recipe["passes"], self.engine.get("search_strategy"),
                            lambda c: sort_key(c["metrics"], c["missed_goals"]), bool(goals), timed_goals),
                     target, flow_index)
                    for target in self.targets for flow_index, flow in enumerate(self.recipe["pass_flows"])]
        limit, running, candidates, failures = self._in_flight(), {}, [], []
        while True:
            asked = True
            while asked and len(running) < limit:  # round robin, so every search gets its turn
                asked = False
                for search, target, flow_index in searches:
                    trial = search.ask() if len(running) < limit else None
                    if trial is not None:
                        future = pool.submit(self._candidate, input_model, search, trial, target, baselines[target.index])
                        running[future] = (search, trial, target, flow_index)
                        asked = True
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                search, trial, target, flow_index = running.pop(future)
                outcome = future.result()  # a system that cannot run anything stops the run here
                outcome["order"] = (target.index, flow_index, trial.number)
                (failures if "error" in outcome else candidates).append(outcome)
                search.tell(trial, None if "error" in outcome else outcome)
        order = lambda item: item.pop("order")  # noqa: E731 - results arrive in any order; output does not
        return sorted(candidates, key=order), sorted(failures, key=order)

    def _record_machine_use(self, label: str, mode: str, start: float, end: float) -> None:
        self.machine_use.append({"label": label, "mode": mode, "start_s": round(start - self._started_wall, 4),
                                 "end_s": round(end - self._started_wall, 4)})

    @contextmanager
    def _step_on(self, system_name: str, label: str, measures: bool):
        """Hold what a step's work needs: a place on its system (the local one runs one job at a
        time), then this machine, shared for its job, hashing and tokenizing, or alone for a step that
        measures. A remote system's jobs run on machines of their own. Always in this order, so no
        two steps wait on each other."""
        with self._slots[system_name]:
            if getattr(self.systems[system_name], "remote", False):
                yield
            else:
                with self.machine.hold(label, alone=measures):
                    yield

    def _in_flight(self) -> int:
        """Candidates worked on at once. With N jobs side by side, 2N: while one candidate waits to
        measure alone, another has a pass or an accuracy evaluation ready to keep the machine busy."""
        n = self.engine["max_concurrency"]
        return 1 if n == 1 else 2 * n

    def _candidate(self, input_model: ModelRef, search: Search, trial, target: Target, baseline: tuple) -> dict:
        """Run one trial's flow and evaluate its model: a candidate, or a failure record."""
        flow = search.flow[:trial.upto]
        name = "-".join(flow) + (f"_{trial.number}" if search.searched else "")
        model_id = target.label(name, self.several)
        accelerator = target.accelerator
        history: list[dict] = []  # one entry per pass done: on a failure, flow[len(history)] is the pass that failed
        model = None
        try:
            model = self._run_flow(flow, input_model, target, trial.point, history)
            # Without the input model's outputs (its evaluation failed) there is nothing to compare a candidate against.
            without = REFERENCE_METRICS if self.engine["evaluate_input_model"] and baseline[1] is None else ()
            # A search that learns from its candidates needs their timings now, not only at the end.
            metrics, _, runtime = self._evaluate(model_id, model, target, baseline[1], without,
                                                 side_by_side=not search.learns) if self.metrics else ({}, None, None)
        except SystemUnavailable:
            raise
        except OliveSystemsError as exc:
            step = "evaluation" if model is not None else f"pass '{flow[len(history)]}'"
            return self._failure(model_id, step, exc, accelerator, _point_text(trial.values))
        missed = missed_goals(metrics, goals_of(self.metrics), baseline[0])
        return {"model_id": model_id, "model": model, "history": history, "metrics": metrics, "baseline": baseline[0],
                "missed_goals": missed, "meets_goals": not missed, "device": accelerator.device,
                "execution_provider": served_provider(model.inference_settings, accelerator.execution_provider),
                "system": target.system, "runtime": runtime, "search_point": _point_text(trial.values),
                "target": target.index}  # its EP may be another than the target's (served_provider)

    def _failure(self, model_id: str, step: str, exc: OliveSystemsError, accelerator: Accelerator, point: dict) -> dict:
        """A failure record, labelled by the step that failed (a pass, by name, or the evaluation), with
        the job's log tail and, for an error raised here, the traceback (shown with --verbose)."""
        cause = exc.__cause__  # a library error turned into a PassError here (_guarded)
        trace = traceback.format_exception(cause)[-40:] if cause is not None else []
        labelled = exc.message if exc.message.startswith((step, "evaluation of")) else f"{step} failed: {exc.message}"
        self.emit("failed", model_id, error=labelled + (f" (fix: {exc.fix})" if exc.fix else ""))
        return {"model_id": model_id, "step": step, "error": labelled, "fix": exc.fix,
                "log_tail": getattr(exc, "log_tail", []), "log_file": getattr(exc, "log_file", None),
                "traceback": [line for text in trace for line in text.rstrip().splitlines()],
                "device": accelerator.device, "execution_provider": accelerator.execution_provider, "search_point": point}

    def _stop_systems(self) -> None:
        while self._started_systems:
            system = self._started_systems.pop()
            try:
                system.stop()
            except Exception as exc:  # the run's own outcome (or error) is what to report; this is a warning
                self.emit("warning", f"stopping system '{system.name}' failed: {type(exc).__name__}: {exc}")

    def _package(self, output: WorkflowOutput, output_dir: Path) -> None:
        """Register assets through a started AzureML system's workspace; without one, write their YAML."""
        from .packaging import package

        client = next((getattr(s, "client", None) for s in self._started_systems if getattr(s, "client", None)), None)
        def work():
            return package(output, self.engine["packaging_config"], output_dir, client,
                           warn=lambda message: self.emit("warning", message))

        for path in self._guarded("packaging", work):
            self.emit("log", "packaging", message=f"wrote {path}")

    def _input_model(self) -> ModelRef:
        spec = self.recipe["input_model"]
        if spec["type"] == "PyTorchModel":  # a script's torch module: its files go into one cache folder
            from .pytorch_model import input_model

            return self._guarded("reading the PyTorch model", lambda: input_model(spec, self.cache.root))
        source = spec["model_path"] if spec["model_path"].startswith("azureml:") else None
        if source:  # an AzureML asset: downloaded once into the cache, reused offline after
            from .azureml_assets import fetch_remote_model, job_input_reference, workspace_for

            path = self._guarded("downloading the input model",
                                 lambda: fetch_remote_model(source, self.cache.root, workspace_for(source, self.recipe)))
        else:
            path = Path(spec["model_path"])
        known_hash = None
        if spec.get("gguf_file"):  # read once into a Hugging Face folder in the cache, named by the file's hash
            from .llm.gguf import materialize_gguf

            path = self._guarded("reading the GGUF checkpoint", lambda: materialize_gguf(
                path / spec["gguf_file"], self.cache.root, lambda message: self.emit("log", "gguf", message=message)))
            known_hash = path.name
        folder = path if path.is_dir() else path.parent
        # The model script and io config shape the export, so they are part of the model's identity.
        extra = json.dumps({k: spec.get(k) for k in ("io_config", "dummy_inputs_func", "task", "gguf_file", "model_class",
                                                     "components")
                            if k not in ("model_class", "components") or spec.get(k)}, sort_keys=True).encode()
        if spec.get("model_script"):
            extra += Path(spec["model_script"]).read_bytes()
        model = ModelRef(
            type=spec["type"], path=str(folder), hash="", task=spec.get("task"), model_script=spec.get("model_script"),
            io_config=spec.get("io_config"), dummy_inputs_func=spec.get("dummy_inputs_func"),
            inference_settings=spec.get("inference_settings"),
            source_reference=job_input_reference(folder) if source else None,
            attributes={k: spec[k] for k in ("model_class", "components") if spec.get(k)},  # components: composite.py
        )
        if spec["type"] == "OnnxModel" and path.is_file() and path.name != "model.onnx":
            raise OliveSystemsError(f"input_model.model_path: ONNX model files must be named model.onnx ({path.name})",
                                    "point model_path at the folder holding model.onnx, or rename the file")
        model.hash = hashlib.sha256(known_hash.encode() + extra).hexdigest() if known_hash else folder_sha256(folder, extra)
        return model

    def _run_flow(self, flow: list[str], model: ModelRef, target: Target, point: dict, history: list[dict]) -> ModelRef:
        """point: the searched settings of this trial, pass name -> {param: value}; history: each pass done is
        appended to it as it ends."""
        parent_id = f"input_model-{model.hash[:8]}"
        for index, pass_name in enumerate(flow):
            entry = self.recipe["passes"][pass_name]
            if pass_name in point:
                entry = dict(entry, config={**(entry.get("config") or {}), **point[pass_name]})
            model, step = self._run_pass(pass_name, entry, model, target)
            model_id = f"{index}_{entry['type']}-{step['key'][:8]}"
            history.append({"model_id": model_id, "parent_model_id": parent_id, "pass": pass_name, "type": entry["type"],
                            **step, "searched": sorted(point.get(pass_name, {}))})
            parent_id = model_id
        return model

    def _run_pass(self, pass_name: str, entry: dict, model: ModelRef, target: Target):
        pass_cls = get_pass_class(entry["type"])
        accelerator = target.accelerator
        # An EP-dependent pass runs where its accelerator is; conversion and the like on the host.
        system_name = entry.get("host") or (target.system if pass_cls.accelerator_dependent else self.engine["host"])
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
                     for name in pass_cls.data_configs_used(config)},
            "accelerator": accelerator.to_dict() if pass_cls.accelerator_dependent else None,
            "system": self.systems[system_name].fingerprint(pass_cls.depends_on),
        })
        with self.flights.lock(key):  # a pass two trials share runs once, and fails once
            if key in self._failed:
                raise self._failed[key]
            if key in self._memo:
                result, _ = self._memo[key]  # another trial of this run made it: reused, not computed again
                return result, {"config": config, "key": key, "cached": True, "source": "this run", "seconds": 0.0}
            try:
                self._materialize(model)  # before holding the machine: a download may need to recompute
                with self._step_on(system_name, pass_name, pass_cls.measures_timing):
                    return self._run_pass_once(pass_name, entry, pass_cls, config, key, model, accelerator, system_name)
            except SystemUnavailable:
                raise
            except OliveSystemsError as exc:
                self._failed[key] = exc
                raise

    def _run_pass_once(self, pass_name, entry, pass_cls, config, key, model, accelerator, system_name):
        started = time.perf_counter()
        job = {"kind": "pass", "pass": {"name": pass_name, "type": entry["type"], "config": config}}
        data_names = pass_cls.data_configs_used(config)

        def build(folder: Path) -> dict:
            result, job_dir = self._dispatch(system_name, job, model, accelerator, data_names, None, pass_name,
                                             measures=pass_cls.measures_timing)
            os.rename(job_dir / "output" / result["output_model"]["path"], folder / "model")
            shutil.rmtree(job_dir, ignore_errors=True)
            return {"model": result["output_model"], "pass": pass_name, "type": entry["type"],
                    "seconds": round(time.perf_counter() - started, 3), "system": system_name}

        def compute():
            self.emit("start", pass_name, step="pass")
            return self._guarded(f"pass '{pass_name}'", lambda: self.cache.put("runs", key, build), ends=pass_name)

        hit = self.cache.get("runs", key)
        cached = hit is not None
        if not cached:
            hit = compute()
        elif hit.pending:  # a shared entry: its files are fetched only if something needs them
            with self._lock:
                self._pending[str(hit.path)] = (hit, compute)
        result = ModelRef.from_dict(hit.meta["model"])
        result = result.relocated(hit.path / result.path)
        seconds = round(time.perf_counter() - started, 3)
        self._memo[key] = (result, cached)
        self.steps.append({"step": "pass", "name": pass_name, "key": key, "cached": cached, "source": hit.source,
                           "seconds": seconds})
        self.emit("cached" if cached else "done", pass_name, step="pass", seconds=seconds, source=hit.source)
        return result, {"config": config, "key": key, "cached": cached, "source": hit.source, "seconds": seconds}

    # ---- jobs ----

    def _system(self, name: str):
        """A started system; one that cannot start, or lacks an EP it should have, stops the run."""
        system = self.systems[name]
        with self._lock:
            if system not in self._started_systems:
                mounts = {"cache": self.cache.root.resolve(), "jobs": self._jobs_root(), "input": self._input_folder}
                self._started_systems.append(system)  # stopped at the end even if its start fails half-way
                try:
                    self._guarded(f"starting system '{name}'", lambda: system.start(mounts))
                    available = self._guarded(f"probing system '{name}'", system.available_providers)
                except OliveSystemsError as exc:
                    raise SystemUnavailable(exc.message, exc.fix) from exc
                wanted = {ep for acc in self.recipe["systems"][name].get("accelerators", [])
                          for ep in acc.get("execution_providers", [])}
                wanted |= {t.accelerator.execution_provider for t in self.targets if t.system == name}
                missing = sorted(wanted - set(available))
                if missing:
                    raise SystemUnavailable(f"system '{name}' lacks {missing} (it has {available})",
                                            "use the image / environment built for that execution provider")
        return system

    def _jobs_root(self) -> Path:
        root = (self.cache.root / "jobs").resolve()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _dispatch(self, system_name: str, job: dict, model: ModelRef, accelerator: Accelerator,
                  data_names: list[str], reference: dict | None, label: str, measures: bool) -> tuple[dict, Path]:
        """Write a job (data as .npz, user scripts copied in), run it on a system, check its result.
        On this machine the job holds the machine lock itself: shared, and alone while it times."""
        self._materialize(model)
        system = self._system(system_name)
        here = not getattr(system, "remote", False)  # remote jobs each have their own machine
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
        side_by_side = self.engine["max_concurrency"]
        if job["kind"] == "evaluation" and not measures and side_by_side > 1 and here:
            # Jobs side by side each get their share of the cores: more ONNX Runtime threads than cores
            # spin against each other. Quality metrics do not depend on the thread count (timings would).
            document["intra_op_threads"] = max(1, (os.cpu_count() or 1) // side_by_side)
        write_json(job_dir / "job.json", document)
        began = time.perf_counter()
        result = system.run_job(job_dir / "job.json", timeout, lambda line: self._job_line(label, line))
        self.jobs.append({"label": label, "kind": job["kind"], "system": system_name, "measures": measures,
                          "start_s": round(began - self._started, 4), "end_s": round(time.perf_counter() - self._started, 4)})
        check(result, RESULT_SCHEMA, "result")
        if result["status"] != "succeeded":
            log_file = job_dir / LOG_FILE  # kept beside the job folders, and copied into the failure report
            kept = self._jobs_root() / "failed" / f"{job_dir.name}.log"
            if log_file.is_file():
                kept.parent.mkdir(exist_ok=True)
                os.replace(log_file, kept)
            shutil.rmtree(job_dir, ignore_errors=True)
            error = result["error"] or {"message": "job failed", "fix": None}
            raise JobError(f"{error['message']} [on {system_name}]", error.get("fix"), result["log_tail"],
                           str(kept) if kept.is_file() else None)
        return result, job_dir

    def _job_line(self, label: str, line: str) -> None:
        """A job's log line; a timing loop's progress line (olive_systems.measure) is a progress event."""
        text = progress_text(line)
        if text is None:
            self.emit("log", label, message=line)
        else:
            self.emit("progress", label, message=text)

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

    def _guarded(self, what: str, work: Callable, ends: str | None = None):
        """Turn an unexpected library error into a PassError so the run records it and goes on.
        ends: the started step this work is, told as ended when it fails (the console stops showing it)."""
        try:
            return work()
        except Exception as exc:
            if ends:
                self.emit("ended", ends)
            if isinstance(exc, OliveSystemsError):
                raise
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise PassError(f"{what} failed: {type(exc).__name__}: {detail}", "run with --verbose for the traceback") from exc

    def _materialize(self, model: ModelRef) -> None:
        """Make sure a model's files are here: download a shared entry, or recompute it if it is corrupt."""
        with self._lock:
            found = [(f, self._pending.pop(f)) for f in list(self._pending)
                     if model.path == f or model.path.startswith(f + os.sep)]
        for _folder, (entry, recompute) in found:
            if not self.cache.materialize(entry):
                recompute()
                for step in self.steps:
                    if step["key"] == entry.key:
                        step.update(cached=False, source="computed")

    def _fingerprint(self, name: str) -> str:
        """A data config's content hash, read once per run however many keys use it."""
        with self._lock:
            if name not in self._fingerprints:
                self._fingerprints[name] = data_mod.fingerprint(self.recipe["data_configs"][name])
            return self._fingerprints[name]

    def _load_data(self, name: str, model: ModelRef):
        """Tokenized batches of a data config for a model, made here on the host (memoized)."""
        key = (name, model.path)
        self._materialize(model)
        with self._lock:
            if key not in self._data_cache:
                self._data_cache[key] = data_mod.load_batches(self.recipe["data_configs"][name], Path(model.path))
            return self._data_cache[key]

    def _evaluation_system(self, model: ModelRef, target: Target) -> str:
        if model.type in ("HfModel", "PyTorchModel") and not self.systems[target.system].can_run_torch:
            return self.engine["host"]  # torch models are evaluated where torch is
        return target.system

    def _evaluate(self, label: str, model: ModelRef, target: Target, reference: dict | None, without: tuple = (),
                  side_by_side: bool = True):
        """Returns (metrics, reference artifacts, runtime). Quality metrics and timing metrics are two
        jobs: the first may share the machine, the second must not (it would measure its neighbours).
        without: metric types left out (those that need the input model's outputs, when it failed).
        side_by_side: leave out the metrics that _time_together times for all models at the end."""
        metrics, artifacts, runtime = {}, {}, None
        timing = [m for m in self.metrics if m["type"] in TIMING_METRICS and not (side_by_side and m in self.side_by_side)]
        quality = [m for m in self.metrics if m["type"] not in TIMING_METRICS and m["type"] not in without]
        for group, is_timing in ((quality, False), (timing, True)):
            if group:
                values, stored, runtime = self._evaluate_group(label, model, target, group, None if is_timing else reference,
                                                               is_timing)
                metrics.update(values)
                artifacts = artifacts or stored
        return self._in_metric_order(metrics), artifacts, runtime

    def _in_metric_order(self, metrics: dict) -> dict:
        order = [f"{m['name']}-{sub['name']}" for m in self.metrics for sub in m["sub_types"]]
        return dict(sorted(metrics.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))

    # ---- timing side by side ----

    def _time_together(self, candidates: list[dict]) -> list[dict]:
        """Latency and throughput of every candidate, per target, timed side by side in one job per
        system, the first candidate (the first flow's) the reference of each ratio. Sets those figures
        and the goals they decide; a candidate that could not be timed is removed and becomes a failure
        record. Returns the failure records."""
        if not self.side_by_side:
            return []
        goals, failures = goals_of(self.metrics), []
        for target in self.targets:
            accelerator = target.accelerator
            mine = [c for c in candidates if c["target"] == target.index]
            groups: dict[str, list] = {}
            for candidate in mine:
                groups.setdefault(self._evaluation_system(candidate["model"], target), []).append(
                    (candidate["model_id"], candidate["model"]))
            found = {}
            for system_name, group in groups.items():
                found.update(self._time_group(target, system_name, group))
            for candidate in mine:
                values = found[candidate["model_id"]]
                if "error" in values:
                    failures.append(self._timing_failure(candidate["model_id"], values, accelerator,
                                                         candidate["search_point"]))
                    candidates.remove(candidate)
                    continue
                candidate["metrics"] = self._in_metric_order({**candidate["metrics"], **values})
                candidate["missed_goals"] = missed_goals(candidate["metrics"], goals, candidate["baseline"])
                candidate["meets_goals"] = not candidate["missed_goals"]
        return failures

    def _timing_failure(self, model_id: str, found: dict, accelerator: Accelerator, point: dict) -> dict:
        fix = found.get("fix") or ("check that the model runs at every workload shape (a model with fixed shapes "
                                   "runs at those only); run with --verbose for the job's log")
        return self._failure(model_id, "timing", OliveSystemsError(found["error"], fix), accelerator, point)

    def _time_group(self, target: Target, system_name: str, arms: list[tuple[str, ModelRef]]) -> dict:
        """{label: timing metrics, or {"error", "fix"}} of models timed interleaved in one job, the first
        the reference. The same model (and settings) twice is timed once."""
        identity = lambda model: (model.hash, json.dumps(model.inference_settings, sort_keys=True))  # noqa: E731
        firsts: dict = {}
        for label, model in arms:
            firsts.setdefault(identity(model), (label, model))
        distinct = list(firsts.values())
        used = sorted({m["data_config"] for m in self.side_by_side if m.get("data_config")})
        key = make_key({
            "kind": "timing",
            "models": [[model.hash, model.type, model.inference_settings] for _, model in distinct],
            "metrics": self.side_by_side,
            "data": {name: self._fingerprint(name) for name in used},
            "accelerator": target.accelerator.to_dict(),
            "system": self.systems[system_name].fingerprint(("onnxruntime", "torch", "transformers")),
        })
        label = f"timing {len(distinct)} models" if len(distinct) > 1 else distinct[0][0]
        for _, model in distinct:
            self._materialize(model)
        job = {"kind": "timing", "metrics": self.side_by_side,
               "models": [{"name": name, "model": model.to_dict()} for name, model in distinct]}

        def build(folder: Path) -> dict:
            result, job_dir = self._dispatch(system_name, job, distinct[0][1], target.accelerator, used, None, label,
                                             measures=True)
            shutil.rmtree(job_dir, ignore_errors=True)
            return {"metrics": [result["metrics"][name] for name, _ in distinct], "system": system_name,
                    "models": [name for name, _ in distinct]}

        try:
            hit = self._scored(key, label, "timing", f"timing of {label}", system_name, True, build)
        except SystemUnavailable:
            raise
        except OliveSystemsError as exc:  # the job as a whole failed: none of its models has figures
            return {name: {"error": f"timing failed: {exc.message}", "fix": exc.fix} for name, _ in arms}
        timed = {identity(model): found for (_, model), found in zip(distinct, hit.meta["metrics"])}
        return {name: timed[identity(model)] for name, model in arms}

    def _evaluate_group(self, label: str, model: ModelRef, target: Target, metrics: list[dict], reference: dict | None,
                        timing: bool):
        used = sorted({m["data_config"] for m in metrics if m.get("data_config")})
        system_name = self._evaluation_system(model, target)
        key = make_key({
            "kind": "evaluation",
            "model": model.hash,
            "model_type": model.type,
            "inference_settings": model.inference_settings,
            "metrics": metrics,
            "data": {name: self._fingerprint(name) for name in used},
            "accelerator": target.accelerator.to_dict(),
            "reference": reference.get("__key__") if reference else None,
            "system": self.systems[system_name].fingerprint(("onnxruntime", "torch", "transformers")),
        })
        self._materialize(model)

        def build(folder: Path) -> dict:
            result, job_dir = self._dispatch(system_name, {"kind": "evaluation", "metrics": metrics}, model,
                                             target.accelerator, used, reference, label, measures=timing)
            os.rename(job_dir / "output" / result["artifacts"], folder / "artifacts.npz")
            shutil.rmtree(job_dir, ignore_errors=True)
            return {"metrics": result["metrics"], "model": label, "system": system_name, "runtime": result.get("runtime")}

        hit = self._scored(key, label, "timing" if timing else "evaluation", f"evaluation of {label}", system_name,
                           timing, build, shows_metrics=True)
        with np.load(hit.path / "artifacts.npz") as stored:
            artifacts = {name: stored[name] for name in stored.files}
        artifacts["__key__"] = key
        runtime = hit.meta.get("runtime") or {}
        return hit.meta["metrics"], artifacts, (
            {"package": runtime.get("package") or "onnxruntime", "version": runtime["onnxruntime"]}
            if runtime.get("onnxruntime") and model.type == "OnnxModel" else None)

    def _scored(self, key: str, label: str, step: str, what: str, system_name: str, measures: bool,
                build: Callable[[Path], dict], shows_metrics: bool = False):
        """An evaluation or timing step: its cache entry, or build(folder) run on the system while holding
        the key's lock, then the machine (shared, or alone when it measures). Recorded as a step."""
        with self.flights.lock(key), self._step_on(system_name, label, measures):  # key lock first, always
            started = time.perf_counter()
            hit = self.cache.get("evaluations", key)
            if hit is not None and hit.pending and not self.cache.materialize(hit):
                hit = None  # a corrupt shared entry: computed again
            cached = hit is not None
            if not cached:
                self.emit("start", label, step=step)
                hit = self._guarded(what, lambda: self.cache.put("evaluations", key, build), ends=label)
            seconds = round(time.perf_counter() - started, 3)
            self.steps.append({"step": step, "name": label, "key": key, "cached": cached, "source": hit.source,
                               "seconds": seconds})
            shown = {"metrics": {k: v["value"] for k, v in hit.meta["metrics"].items()}} if shows_metrics else {}
            self.emit("cached" if cached else "done", label, step=step, seconds=seconds, source=hit.source, **shown)
        return hit


def _point_text(values: dict) -> dict:
    """A trial's searched settings as {"pass.param": value}, for the output and the report."""
    return {f"{pass_name}.{param}": value for (pass_name, param), value in values.items()}
