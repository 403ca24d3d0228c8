"""Metric types, their sub-types and goals. One registry: METRIC_TYPES."""

from __future__ import annotations

import numpy as np

from ..errors import RecipeError
from ..workload import WORKLOAD_SCHEMA

# type -> {sub_type: higher_is_better}; custom metrics name their own sub-types.
METRIC_TYPES = {
    # f1_score and auroc: Olive's names (f1_score is f1); auroc needs scores, not labels (see class_scores)
    "accuracy": {"accuracy_score": True, "f1": True, "f1_score": True, "precision": True, "recall": True, "auroc": True},
    "latency": {k: False for k in ("avg", "p50", "p75", "p90", "p95", "p99", "min", "max")},
    "throughput": {k: True for k in ("avg", "p50", "p90", "min", "max")},
    "fidelity": {"cosine_mean": True, "cosine_min": True, "max_abs_diff": False},
    # decoders (olive_systems.evaluation.generative): every runtime through olive_systems.llm.runners
    "perplexity": {"perplexity": False, "loss": False},
    "generation": {"ttft_ms": False, "prefill_ms": False, "tokens_per_second": True, "total_ms": False},
    "memory": {"peak_rss_mb": False, "process_peak_rss_mb": False},
    "size_on_disk": {"mb": False, "bytes": False},  # bytes: Olive's sub-type
    "greedy_agreement": {"token_match": True, "exact_match": True},
    "custom": {},
}
# Measured by timing the machine: such a job must not share it with other work.
TIMING_METRICS = ("latency", "throughput", "generation")
# Who computes an accuracy metric: olive-systems itself (numpy; auroc with scikit-learn), or Hugging
# Face `evaluate` (each sub-type is an evaluate metric: accuracy, f1, precision, recall, roc_auc, ...).
BACKENDS = ("olive_systems", "huggingface_metrics")
GOAL_TYPES = ("threshold", "max-degradation", "min-improvement", "percent-max-degradation", "percent-min-improvement")

METRIC_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": list(METRIC_TYPES)},
        "data_config": {"type": "string", "description": "name of a data_configs entry"},
        "backend": {"enum": list(BACKENDS), "default": "olive_systems",
                    "description": "accuracy: olive_systems computes accuracy_score, f1 (f1_score), precision, recall, "
                                   "auroc; huggingface_metrics loads each sub-type with evaluate.load(name)"},
        "sub_types": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "priority": {"type": "integer", "minimum": 1, "description": "1 ranks first; omit to not rank"},
                    "higher_is_better": {"type": "boolean"},
                    "metric_config": {"type": "object", "description": "huggingface_metrics: keyword arguments of the "
                                      "metric's compute(), e.g. {average: macro}"},
                    "goal": {
                        "type": "object",
                        "properties": {"type": {"enum": list(GOAL_TYPES)}, "value": {"type": "number"}},
                        "required": ["type", "value"],
                        "additionalProperties": False,
                    },
                },
                "required": ["name"],
                "additionalProperties": False,
            },
        },
        "metric_config": {
            "type": "object",
            "description": "accuracy: threshold (number or 'fit'); latency/throughput: warmup_num, "
                           "repeat_test_num, sleep_num; fidelity: pooling (mean, cls, none); generation: "
                           "prompt_tokens (128), new_tokens (128), warmup_num (1), repeat_test_num (5), budget_s (60); memory: "
                           "prompt_tokens (32), new_tokens (16); greedy_agreement: new_tokens (32)",
            "properties": {
                "threshold": {"oneOf": [{"type": "number"}, {"const": "fit"}]},
                "warmup_num": {"type": "integer", "minimum": 0},
                "repeat_test_num": {"type": "integer", "minimum": 1},
                "sleep_num": {"type": "number", "minimum": 0},
                "budget_s": {"type": "number", "exclusiveMinimum": 0,
                             "description": "latency/throughput: seconds of timing per model (warm-up included), "
                                            "shared by the workload's shapes; candidates timed side by side get this "
                                            "times their number (default 10). generation: seconds per shape, warm-up "
                                            "included; runs stop when the next would not fit (at least one; default 60)"},
                "precision": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                              "description": "latency/throughput: a model alone stops once its median is known to "
                                             "this relative half-width; models side by side once neighbours differ "
                                             "beyond the interval or are equal to it (default 0.02)"},
                "pooling": {"enum": ["mean", "cls", "none"]},
                "prompt_tokens": {"type": "integer", "minimum": 1,
                                  "description": "generation/memory: prompt length in tokens (the data config's first "
                                                 "text repeated or cut to it; fixed ids without a data config)"},
                "new_tokens": {"type": "integer", "minimum": 1,
                               "description": "generation/memory/greedy_agreement: tokens decoded greedily after the prompt"},
            },
            "additionalProperties": False,
        },
        "workload": WORKLOAD_SCHEMA,
        "user_config": {
            "type": "object",
            "properties": {"user_script": {"type": "string"}, "metric_func": {"type": "string"}},
            "additionalProperties": False,
        },
    },
    "required": ["name", "type", "sub_types"],
    "allOf": [{"if": {"properties": {"type": {"enum": ["perplexity", "greedy_agreement"]}}, "required": ["type"]},
               "then": {"required": ["data_config"]}},
              {"if": {"properties": {"backend": {"const": "huggingface_metrics"}}, "required": ["backend"]},
               "then": {"properties": {"type": {"const": "accuracy"}}, "required": ["data_config"]}}],
    "additionalProperties": False,
}


def higher_is_better(metric: dict, sub_type: dict) -> bool:
    if "higher_is_better" in sub_type:
        return sub_type["higher_is_better"]
    return METRIC_TYPES[metric["type"]].get(sub_type["name"], True)


def check_prediction_shape(predictions: np.ndarray, targets: np.ndarray, metric: str, data_config: str) -> None:
    """One prediction per label, or a line that says which post-processing turns outputs into labels."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    if predictions.shape[0] != targets.shape[0] or predictions.size != targets.size:
        raise RecipeError(f"metric '{metric}': the post-processed outputs have shape {list(predictions.shape)} for "
                          f"{targets.size} labels", f"give data config '{data_config}' post_process_data_config "
                          "{type: argmax} (a classifier's logits) or a function that returns one label per row, or set "
                          "input_model.task: text-classification (argmax is its default)")


def class_scores(outputs: list[np.ndarray], predictions: np.ndarray) -> np.ndarray | None:
    """What auroc ranks: a classifier's class probabilities (softmax of its logits; the positive
    class's for two classes), or continuous predictions (similarity scores) as they are."""
    raw = np.concatenate([o.reshape(len(o), -1) for o in outputs]) if outputs else None
    if raw is not None and raw.shape[1] >= 2 and len(raw) == len(predictions):
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities[:, 1] if raw.shape[1] == 2 else probabilities
    predictions = np.asarray(predictions)
    return predictions.ravel() if np.issubdtype(predictions.dtype, np.floating) else None


def classification_scores(predictions: np.ndarray, targets: np.ndarray, scores: np.ndarray | None = None) -> dict:
    predictions, targets = np.asarray(predictions).ravel(), np.asarray(targets).ravel()
    scores_out = _label_scores(predictions, targets)
    if scores is not None and len(np.unique(targets)) < 2:
        raise RecipeError(f"auroc is undefined: the labels hold one class only ({np.unique(targets).tolist()})",
                          "score auroc on data with both classes, or drop the auroc sub-type")
    if scores is not None:
        try:
            from sklearn.metrics import roc_auc_score  # the one score not written here: ties and multi-class done right
        except ImportError:
            raise RecipeError("the auroc metric needs scikit-learn where the evaluation runs, and it is not installed",
                              "pip install scikit-learn there (olive-systems[data]; for an image, add it to its "
                              "requirements), or drop the auroc sub-type") from None
        scores_out["auroc"] = float(roc_auc_score(targets, scores, multi_class="ovr") if np.ndim(scores) == 2
                                    else roc_auc_score(targets, scores))
    return scores_out


def _label_scores(predictions: np.ndarray, targets: np.ndarray) -> dict:
    scores = {"accuracy_score": float((predictions == targets).mean())}
    labels = np.unique(np.concatenate([targets, predictions]))
    positives = [1] if set(labels.tolist()) <= {0, 1} else labels  # binary: the positive class; else macro
    precision, recall, f1 = [], [], []
    for label in positives:
        tp = float(((predictions == label) & (targets == label)).sum())
        p = tp / max(float((predictions == label).sum()), 1.0)
        r = tp / max(float((targets == label).sum()), 1.0)
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    scores.update(precision=float(np.mean(precision)), recall=float(np.mean(recall)), f1=float(np.mean(f1)))
    scores["f1_score"] = scores["f1"]
    return scores


def huggingface_metric_values(metric: dict, predictions: np.ndarray, targets: np.ndarray,
                              scores: np.ndarray | None = None) -> dict:
    """backend: huggingface_metrics: each sub-type through evaluate.load(name).compute(predictions,
    references, **its metric_config). Offline, evaluate reads the metric's script from its modules
    cache (HF_MODULES_CACHE); a metric not there is one error that says so: nothing is substituted."""
    import evaluate

    values = {}
    for sub in metric["sub_types"]:
        sub_name = sub["name"]
        try:
            module = evaluate.load(sub_name)
        except (FileNotFoundError, ConnectionError, OSError) as exc:
            raise RecipeError(
                f"metric '{metric['name']}': huggingface_metrics '{sub_name}': evaluate cannot load the metric's script "
                f"(not in evaluate's modules cache {evaluate.config.HF_MODULES_CACHE}, and the hub cannot be reached or "
                f"HF_HUB_OFFLINE=1): {str(exc).splitlines()[0]}",
                f"load it once where the hub can be reached (python -c \"import evaluate; evaluate.load('{sub_name}')\"), "
                "give the path of a local metric script, or drop backend: huggingface_metrics: olive-systems computes "
                "accuracy_score, f1 (f1_score), precision, recall and auroc itself") from None
        inputs = {"references": np.asarray(targets).ravel().tolist()}
        features = module.features  # its input columns: one Features, or a list of alternatives
        names = set().union(*features) if isinstance(features, list) else set(features)
        if "prediction_scores" in names:  # roc_auc and the like rank scores, not labels
            if scores is None:
                raise RecipeError(f"metric '{metric['name']}': huggingface_metrics '{sub_name}' ranks scores, and the "
                                  "post-processed outputs are labels only",
                                  "use a classifier's logits (argmax post-processing) or continuous scores with a threshold")
            inputs["prediction_scores"] = np.asarray(scores).tolist()
        else:
            inputs["predictions"] = np.asarray(predictions).ravel().tolist()
        try:
            result = module.compute(**inputs, **(sub.get("metric_config") or {}))
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"metric '{metric['name']}': evaluate's '{sub_name}' could not compute: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                              "give compute()'s other arguments in the sub-type's metric_config (e.g. {average: macro} "
                              "for f1 over more than two classes)") from None
        key = sub_name.rstrip("/").split("/")[-1].removesuffix(".py")
        if key in (result or {}):
            values[sub_name] = float(result[key])
        elif result and len(result) == 1:
            values[sub_name] = float(next(iter(result.values())))
        else:
            raise RecipeError(f"metric '{metric['name']}': huggingface_metrics '{sub_name}' returned {sorted(result or {})}",
                              "name the sub-type after the value it reports (its key in compute()'s result)")
    return values


def fit_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    """The score threshold that best separates the binary targets (fixed once, on the input model)."""
    order = np.sort(np.unique(scores))
    candidates = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    accuracy = [((scores >= t).astype(int) == targets).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def timing_stats(times_s: list[float], batch_size: int) -> dict:
    ms = np.asarray(times_s) * 1000
    latency = {"avg": ms.mean(), "min": ms.min(), "max": ms.max(),
               **{f"p{q}": np.percentile(ms, q) for q in (50, 75, 90, 95, 99)}}
    per_second = batch_size * 1000 / ms
    throughput = {"avg": batch_size * 1000 / ms.mean(), "p50": np.percentile(per_second, 50),
                  "p90": np.percentile(per_second, 90), "min": per_second.min(), "max": per_second.max()}
    return {"latency": {k: round(float(v), 4) for k, v in latency.items()},
            "throughput": {k: round(float(v), 4) for k, v in throughput.items()}}


def fidelity_scores(candidate: np.ndarray, reference: np.ndarray) -> dict:
    from ..data import cosine_rows

    cosines = cosine_rows(candidate.reshape(len(candidate), -1), reference.reshape(len(reference), -1))
    return {"cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min()),
            "max_abs_diff": float(np.abs(candidate - reference).max())}


def meets_goal(goal: dict, value: float, baseline: float | None, higher: bool) -> bool:
    kind, target = goal["type"], goal["value"]
    if kind == "threshold":
        return value >= target if higher else value <= target
    if baseline is None:
        return True  # nothing to compare against (input model not evaluated)
    sign = 1 if higher else -1
    delta = sign * (value - baseline)  # > 0 is an improvement
    if kind.startswith("percent-"):
        delta = delta / abs(baseline) * 100 if baseline else 0.0
    return delta >= -target if kind.endswith("max-degradation") else delta >= target


def metric_records(metric: dict, values: dict, details: dict) -> dict:
    """evaluate()'s record of each declared sub-type of a metric, from its values and details by sub-type."""
    results = {}
    for sub in metric["sub_types"]:
        if sub["name"] not in values:
            raise RecipeError(f"metric '{metric['name']}' has no sub-type '{sub['name']}'", f"use one of {sorted(values)}")
        results[f"{metric['name']}-{sub['name']}"] = {"value": values[sub["name"]], "priority": sub.get("priority", -1),
                                                      "higher_is_better": higher_is_better(metric, sub),
                                                      **details.get(sub["name"], {})}
    return results
