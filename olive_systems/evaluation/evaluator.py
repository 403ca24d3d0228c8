"""Evaluate one model on one accelerator: inference over each data config once, then every metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Batches, pooled, post_process
from ..errors import OliveSystemsError, RecipeError
from ..models import ModelRef
from ..ort import create_session, dummy_feed, measure_latency
from ..user_script import load_function
from .generative import GENERATIVE_METRICS, LazyDecoder, metric_values as generative_values
from .metrics import TIMING_METRICS, classification_scores, fidelity_scores, fit_threshold, higher_is_better, timing_stats


class ModelRunner:
    """Runs a model on feed dicts and returns its first output; one class for torch and ONNX models."""

    def __init__(self, model: ModelRef, execution_provider: str, intra_op_threads: int | None = None):
        self.model = model
        if model.type == "OnnxModel":
            self.session = create_session(model.onnx_path, model.inference_settings, execution_provider, intra_op_threads)
            self.input_names = [arg.name for arg in self.session.get_inputs()]
            self.output_name = self.session.get_outputs()[0].name
        elif model.type == "HfModel":  # runs in torch on the CPU, whatever the accelerator: it is the reference
            import inspect

            from ..models import load_hf_model

            self.torch_model = load_hf_model(model)
            self.input_names = list(inspect.signature(self.torch_model.forward).parameters)
        else:
            raise OliveSystemsError(f"cannot evaluate a model of type {model.type}", "use an HfModel or OnnxModel")

    def __call__(self, feed: dict) -> np.ndarray:
        if self.model.type == "OnnxModel":
            return self.session.run([self.output_name], feed)[0]
        import torch

        with torch.inference_mode():
            outputs = self.torch_model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        return outputs[0].numpy()

    def dummy_feed(self) -> dict:
        """Batch 1, sequence 128 of the model's own input names: for timing without a data config."""
        if self.model.type == "OnnxModel":
            return dummy_feed(self.session)
        from ..models import model_input_names

        names = model_input_names(Path(self.model.path))
        return {name: (np.ones if "mask" in name else np.zeros)((1, 128), dtype=np.int64) for name in names}


def evaluate(model: ModelRef, metrics: list[dict], data: dict[str, tuple[dict, Batches]], execution_provider: str,
             reference: dict | None, intra_op_threads: int | None = None) -> tuple[dict, dict]:
    """Returns (metrics, artifacts). `data` maps a data config name to its config and pre-processed
    batches. Artifacts of the input model are the reference for candidates: its pooled outputs (for
    fidelity), any fitted accuracy thresholds and its greedy continuations (greedy_agreement).
    Generative metrics (evaluation.generative) run the model through its decoder runner; the others
    through ModelRunner. Each is opened on first use only."""
    runners: dict[str, ModelRunner] = {}

    def runner() -> ModelRunner:
        if "runner" not in runners:
            runners["runner"] = ModelRunner(model, execution_provider, intra_op_threads)
        return runners["runner"]

    decoder = LazyDecoder(model, execution_provider, intra_op_threads)
    loaded: dict[str, tuple[Batches, list[np.ndarray]]] = {}
    data_configs = {name: config for name, (config, _) in data.items()}

    def data_for(name: str, infer: bool = True):
        if name not in loaded or (infer and not loaded[name][1]):
            batches = data[name][1]
            # a model without token_type_ids must not be fed them
            batches = Batches([{k: v for k, v in feed.items() if k in runner().input_names} for feed in batches.inputs],
                              batches.targets, batches.groups)
            loaded[name] = (batches, [runner()(feed) for feed in batches.inputs] if infer else [])
        return loaded[name]

    results, artifacts = {}, {}
    # Timing first, while nothing else of this evaluation is warm in the caches.
    for metric in sorted(metrics, key=lambda m: m["type"] not in TIMING_METRICS):
        if metric["type"] in GENERATIVE_METRICS:
            values = generative_values(metric, model, decoder, data, reference, artifacts)
        else:
            values = _metric_values(metric, runner(), data_for, data_configs, reference, artifacts)
        for sub in metric["sub_types"]:
            if sub["name"] not in values:
                raise RecipeError(f"metric '{metric['name']}' has no sub-type '{sub['name']}'",
                                  f"use one of {sorted(values)}")
            results[f"{metric['name']}-{sub['name']}"] = {
                "value": values[sub["name"]],
                "priority": sub.get("priority", -1),
                "higher_is_better": higher_is_better(metric, sub),
            }
    return results, artifacts


def _metric_values(metric, runner, data_for, data_configs, reference, artifacts) -> dict:
    kind, config, name = metric["type"], metric.get("metric_config", {}), metric["name"]
    if kind in ("latency", "throughput"):
        feed = data_for(metric["data_config"], infer=False)[0].inputs[0] if metric.get("data_config") else runner.dummy_feed()
        times = measure_latency(lambda: runner(feed), config.get("warmup_num", 10),
                                config.get("repeat_test_num", 100), config.get("sleep_num", 0))
        batch_size = len(next(iter(feed.values())))
        return timing_stats(times, batch_size)[kind]
    batches, outputs = data_for(metric["data_config"])
    if kind == "fidelity":
        how = config.get("pooling", "mean")
        mine = np.concatenate([o.reshape(len(o), -1) for o in outputs]) if how == "none" else pooled(outputs, batches, how)
        key = f"outputs:{metric['data_config']}:{how}"
        artifacts[key] = mine
        theirs = reference[key] if reference is not None else mine
        return fidelity_scores(mine, theirs)
    predictions = post_process(data_configs[metric["data_config"]], outputs, batches)
    if kind == "accuracy":
        if batches.targets is None:
            raise RecipeError(f"metric '{name}' needs labels", f"set label_col in data config '{metric['data_config']}'")
        threshold = config.get("threshold")
        if threshold == "fit":  # fixed on the input model, then reused for every candidate
            key = f"threshold:{name}"
            threshold = reference[key] if reference is not None else fit_threshold(predictions, batches.targets)
            artifacts[key] = np.float64(threshold)
        if threshold is not None:
            predictions = (predictions >= float(threshold)).astype(int)
        return classification_scores(predictions, batches.targets)
    func = load_function(metric.get("user_config", {}).get("user_script"),
                         metric.get("user_config", {}).get("metric_func", ""), f"metric '{name}'")
    value = func(predictions, batches.targets)
    return {k: float(v) for k, v in value.items()} if isinstance(value, dict) else {metric["sub_types"][0]["name"]: float(value)}
