"""Evaluate one model on one accelerator: inference over each data config once, then every metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Batches, pooled, post_process
from ..errors import OliveSystemsError, RecipeError
from ..models import ModelRef
from ..ort import dummy_feed
from ..measure import weighted
from ..user_script import load_function
from ..workload import shape_name
from .generative import GENERATIVE_METRICS, LazyDecoder, metric_values as generative_values
from .metrics import (TIMING_METRICS, check_prediction_shape, class_scores, classification_scores, fidelity_scores,
                      fit_threshold, huggingface_metric_values, metric_records)
from .timing import timing_values


class ModelRunner:
    """Runs a model on feed dicts and returns its first output; one class for torch and ONNX models."""

    def __init__(self, model: ModelRef, execution_provider: str, intra_op_threads: int | None = None):
        self.model = model
        if model.type == "OnnxModel":
            from ..passes.split import open_session  # a split model's parts run as one chain

            self.session = open_session(model, execution_provider, intra_op_threads)
            self.input_names = [arg.name for arg in self.session.get_inputs()]
            self.output_name = self.session.get_outputs()[0].name
        elif model.type == "HfModel":  # runs in torch on the CPU, whatever the accelerator: it is the reference
            import inspect

            from ..models import load_hf_model

            self.torch_model = load_hf_model(model)
            self.input_names = list(inspect.signature(self.torch_model.forward).parameters)
        elif model.type == "PyTorchModel":  # a model script's module, in torch on the CPU (pytorch_model.py)
            from ..pytorch_model import TorchScriptRunner

            self.torch_runner = TorchScriptRunner(model)
            self.input_names = self.torch_runner.input_names
        else:
            raise OliveSystemsError(f"cannot evaluate a model of type {model.type}", "use an HfModel or OnnxModel")

    def __call__(self, feed: dict) -> np.ndarray:
        if self.model.type == "OnnxModel":
            return self.session.run([self.output_name], feed)[0]
        if self.model.type == "PyTorchModel":
            return self.torch_runner(feed)
        import torch

        with torch.inference_mode():
            outputs = self.torch_model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        return outputs[0].numpy()

    def timed(self, feed: dict):
        """A no-argument call that runs the model once on feed as its inference settings serve it:
        with IOBinding when tuning chose io_bind, so a timing measures what was tuned."""
        if self.model.type == "OnnxModel" and (self.model.inference_settings or {}).get("io_bind"):
            from ..passes.session_tuning_options import make_runner

            return make_runner(self.session, feed, self.model.inference_settings, self.model.onnx_path)
        return lambda: self(feed)

    def dummy_at(self, batch: int, sequence: int) -> dict:
        """Zeros (ones for a mask) of batch x sequence under the model's input names."""
        if self.model.type == "OnnxModel":
            return dummy_feed(self.session, batch, sequence)
        return {name: (np.ones if "mask" in name else np.zeros)((batch, sequence), dtype=np.asarray(value).dtype)
                for name, value in self.dummy_feed().items()}

    def dummy_feed(self) -> dict:
        """Batch 1, sequence 128 of the model's own input names: for timing without a data config."""
        if self.model.type == "OnnxModel":
            return dummy_feed(self.session)
        if self.model.type == "PyTorchModel":
            return self.torch_runner.dummy_feed()
        from ..models import model_input_names

        names = model_input_names(Path(self.model.path))
        return {name: (np.ones if "mask" in name else np.zeros)((1, 128), dtype=np.int64) for name in names}


def evaluate(model: ModelRef, metrics: list[dict], data: dict[str, tuple[dict, Batches]], execution_provider: str,
             reference: dict | None, intra_op_threads: int | None = None, log=None) -> tuple[dict, dict]:
    """Returns (metrics, artifacts). `data` maps a data config name to its config and pre-processed
    batches. Artifacts of the input model are the reference for candidates: its pooled outputs (for
    fidelity), any fitted accuracy thresholds and its greedy continuations (greedy_agreement).
    Generative metrics (evaluation.generative) run the model through its decoder runner; the others
    through ModelRunner. Each is opened on first use only. Timing metrics are measured with
    olive_systems.measure (budgeted, with intervals; log receives its progress lines)."""
    if model.attributes.get("components"):  # a model of several components: its own evaluation (composite.py)
        from ..composite import evaluate as evaluate_components

        return evaluate_components(model, metrics, execution_provider, intra_op_threads, log)
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

    say = log or (lambda message: None)
    results, artifacts = {}, {}
    timings: dict = {}  # (data config, shape) -> Measurement: latency and throughput of a shape share their calls
    # Timing first, while nothing else of this evaluation is warm in the caches.
    for metric in sorted(metrics, key=lambda m: m["type"] not in TIMING_METRICS):
        details: dict = {}  # sub-type -> interval / by_shape of a timing metric
        if metric["type"] == "generation" and metric.get("workload"):
            values = _generation_by_shape(metric, details, lambda m: generative_values(m, model, decoder, data, reference,
                                                                                        artifacts, say))
        elif metric["type"] in GENERATIVE_METRICS:
            values = generative_values(metric, model, decoder, data, reference, artifacts, say)
        elif metric["type"] in ("latency", "throughput"):
            base = data_for(metric["data_config"], infer=False)[0].inputs[0] if metric.get("data_config") else None
            values, details = timing_values(metric, {"model": runner()}, base, timings, say)["model"]
        else:
            values = _metric_values(metric, runner(), data_for, data_configs, reference, artifacts)
        results.update(metric_records(metric, values, details))
    return results, artifacts


def _metric_values(metric, runner, data_for, data_configs, reference, artifacts) -> dict:
    kind, config, name = metric["type"], metric.get("metric_config", {}), metric["name"]
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
        scores = class_scores(outputs, predictions) if threshold is None else np.asarray(predictions, dtype=np.float64)
        if threshold is not None:
            predictions = (predictions >= float(threshold)).astype(int)
        check_prediction_shape(predictions, batches.targets, name, metric["data_config"])
        if metric.get("backend") == "huggingface_metrics":
            return huggingface_metric_values(metric, predictions, batches.targets, scores)
        wants_auroc = any(sub["name"] == "auroc" for sub in metric["sub_types"])
        if wants_auroc and scores is None:
            raise RecipeError(f"metric '{name}': auroc ranks scores, and the post-processed outputs are labels only",
                              "use a classifier's logits (task text-classification, argmax post-processing), or "
                              "continuous scores with metric_config.threshold")
        return classification_scores(predictions, batches.targets, scores if wants_auroc else None)
    func = load_function(metric.get("user_config", {}).get("user_script"),
                         metric.get("user_config", {}).get("metric_func", ""), f"metric '{name}'")
    value = func(predictions, batches.targets)
    return {k: float(v) for k, v in value.items()} if isinstance(value, dict) else {metric["sub_types"][0]["name"]: float(value)}


def _generation_by_shape(metric: dict, details: dict, values_for) -> dict:
    """The generation metric at each (prompt, new tokens) shape of its workload, weighted."""
    figures = []
    for shape in metric["workload"]:
        config = {**(metric.get("metric_config") or {}), "prompt_tokens": shape["prompt_tokens"],
                  "new_tokens": shape["new_tokens"]}
        figures.append((shape, values_for({**metric, "metric_config": config})))
    weights = [shape["weight"] for shape, _ in figures]
    values = {}
    for sub in figures[0][1]:
        values[sub] = round(weighted([found[sub] for _, found in figures], weights), 4)
        details[sub] = {"by_shape": {shape_name(shape): {"value": found[sub], "weight": shape["weight"],
                                                         "prompt_tokens": shape["prompt_tokens"],
                                                         "new_tokens": shape["new_tokens"]}
                                     for shape, found in figures}}
    return values
