"""WorkflowOutput -> DeviceOutput -> ModelOutput: the results of a run, as the seeds specify."""

from __future__ import annotations

import json
from pathlib import Path


class ModelOutput:
    """One candidate model: where it is, how it scored, and how it was made."""

    def __init__(self, data: dict):
        self._data = data
        self.model_id: str = data["model_id"]
        self.model_path: str = data["model_path"]
        self.model_type: str = data["model_type"]
        self.model_config: dict = data["model_config"]
        self.metrics: dict = data["metrics"]
        self.rank: int | None = data.get("rank")
        self.meets_goals: bool = data.get("meets_goals", True)
        self.missed_goals: list = data.get("missed_goals", [])
        self.run_history: list = data.get("run_history", [])
        # On the Pareto front of the priority metrics: no other candidate is at least as good on all of them.
        self.pareto: bool = data.get("pareto", False)
        # The ONNX Runtime package that evaluated it, e.g. {"package": "onnxruntime-openvino", "version": "1.24.1"}.
        self.runtime: dict | None = data.get("runtime")

    @property
    def metrics_value(self) -> dict:
        return {name: entry["value"] for name, entry in self.metrics.items()}

    def from_device(self) -> str:
        return self._data["device"]

    def from_execution_provider(self) -> str:
        return self._data["execution_provider"]

    def from_pass(self) -> str | None:
        return self.run_history[-1]["type"] if self.run_history else None

    def get_parent_model_id(self) -> str | None:
        return self.run_history[-1]["parent_model_id"] if self.run_history else None

    def use_ort_extension(self) -> bool:
        return bool(self.model_config.get("config", {}).get("use_ort_extensions", False))

    def get_inference_config(self) -> dict | None:
        return self.model_config.get("config", {}).get("inference_settings")

    def to_dict(self) -> dict:
        return dict(self._data, rank=self.rank, meets_goals=self.meets_goals, missed_goals=self.missed_goals,
                    pareto=self.pareto)

    def __repr__(self) -> str:
        return f"ModelOutput({self.model_id!r}, rank={self.rank}, metrics={self.metrics_value})"


class DeviceOutput:
    """The candidates of one device, grouped by execution provider; ep lookup ignores case."""

    def __init__(self, device: str, models_by_ep: dict[str, list[ModelOutput]]):
        self.device = device
        self._by_ep = models_by_ep

    def __getitem__(self, execution_provider: str) -> list[ModelOutput]:
        for ep, models in self._by_ep.items():
            if ep.lower() == execution_provider.lower():
                return models
        raise KeyError(f"no {execution_provider} results for {self.device} (have {list(self._by_ep)})")

    def __contains__(self, execution_provider: str) -> bool:
        return any(ep.lower() == execution_provider.lower() for ep in self._by_ep)

    def has_output_model(self) -> bool:
        return any(self._by_ep.values())

    def get_output_models(self) -> list[ModelOutput]:
        return _ranked(m for models in self._by_ep.values() for m in models)

    def get_best_candidate(self) -> ModelOutput | None:
        return next(iter(self.get_output_models()), None)

    def get_best_candidate_by_execution_provider(self, execution_provider: str) -> ModelOutput | None:
        return next(iter(_ranked(self[execution_provider])), None) if execution_provider in self else None

    def __repr__(self) -> str:
        return f"DeviceOutput({self.device!r}, {{{', '.join(f'{k}: {len(v)}' for k, v in self._by_ep.items())}}})"


class WorkflowOutput:
    """All results of a run. Devices by key or attribute, any case: out['cpu'], out.CPU."""

    def __init__(self, data: dict):
        self._data = data
        self.input_model_metrics: dict | None = data.get("input_model_metrics")
        self.failures: list[dict] = data.get("failures", [])
        self.steps: list[dict] = data.get("steps", [])
        self.jobs: list[dict] = data.get("jobs", [])  # each job's label, system, start_s/end_s, whether it measures
        # When work held this machine, and how: "shared", or "alone" for a timing loop.
        self.machine_use: list[dict] = data.get("machine_use", [])
        self.output_dir: str | None = data.get("output_dir")
        grouped: dict[str, dict[str, list[ModelOutput]]] = {}
        for model in data.get("models", []):
            grouped.setdefault(model["device"].lower(), {}).setdefault(model["execution_provider"], []).append(ModelOutput(model))
        self._devices = {device: DeviceOutput(device, eps) for device, eps in grouped.items()}

    @classmethod
    def load(cls, output_dir: str | Path) -> "WorkflowOutput":
        """Read back the results a run wrote to its output folder."""
        return cls(json.loads((Path(output_dir) / "workflow_output.json").read_text()))

    def to_dict(self) -> dict:
        return dict(self._data, models=[m.to_dict() for m in self.get_output_models()])

    def __getitem__(self, device: str) -> DeviceOutput:
        try:
            return self._devices[device.lower()]
        except KeyError:
            raise KeyError(f"no results for device '{device}' (have {list(self._devices)})") from None

    def __getattr__(self, name: str) -> DeviceOutput:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(str(exc)) from None

    def get_input_model_metrics(self) -> dict | None:
        return self.input_model_metrics

    def get_available_devices(self) -> list[str]:
        return list(self._devices)

    def has_output_model(self) -> bool:
        return any(d.has_output_model() for d in self._devices.values())

    def get_output_models_by_device(self, device: str) -> list[ModelOutput]:
        return self[device].get_output_models() if device.lower() in self._devices else []

    def get_output_model_by_id(self, model_id: str) -> ModelOutput | None:
        return next((m for m in self.get_output_models() if m.model_id == model_id), None)

    def get_output_models(self) -> list[ModelOutput]:
        return _ranked(m for d in self._devices.values() for m in d.get_output_models())

    def get_best_candidate_by_device(self, device: str) -> ModelOutput | None:
        return self[device].get_best_candidate() if device.lower() in self._devices else None

    def get_best_candidate(self) -> ModelOutput | None:
        return next(iter(self.get_output_models()), None)

    def trace_back_run_history(self, model_id: str) -> dict:
        """From the model back to the input model: model id -> the pass run that made it."""
        model = self.get_output_model_by_id(model_id)
        if model is None:
            raise KeyError(f"no output model '{model_id}'")
        history = {}
        for step in reversed(model.run_history):
            history[step["model_id"]] = {k: step.get(k) for k in ("parent_model_id", "pass", "type", "config", "seconds", "cached",
                                                                  "source", "searched")}
        history[model.run_history[0]["parent_model_id"] if model.run_history else model_id] = None
        return history


def _ranked(models) -> list[ModelOutput]:
    return sorted(models, key=lambda m: (m.rank is None, m.rank or 0))
