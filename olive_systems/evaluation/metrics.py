"""Metric types, their sub-types and goals. One registry: METRIC_TYPES."""

from __future__ import annotations

import numpy as np

# type -> {sub_type: higher_is_better}; custom metrics name their own sub-types.
METRIC_TYPES = {
    "accuracy": {"accuracy_score": True, "f1": True, "precision": True, "recall": True},
    "latency": {k: False for k in ("avg", "p50", "p75", "p90", "p95", "p99", "min", "max")},
    "throughput": {k: True for k in ("avg", "p50", "p90", "min", "max")},
    "fidelity": {"cosine_mean": True, "cosine_min": True, "max_abs_diff": False},
    # decoders (olive_systems.evaluation.generative): every runtime through olive_systems.llm.runners
    "perplexity": {"perplexity": False, "loss": False},
    "generation": {"ttft_ms": False, "prefill_ms": False, "tokens_per_second": True, "total_ms": False},
    "memory": {"peak_rss_mb": False, "process_peak_rss_mb": False},
    "size_on_disk": {"mb": False},
    "greedy_agreement": {"token_match": True, "exact_match": True},
    "custom": {},
}
# Measured by timing the machine: such a job must not share it with other work.
TIMING_METRICS = ("latency", "throughput", "generation")
GOAL_TYPES = ("threshold", "max-degradation", "min-improvement", "percent-max-degradation", "percent-min-improvement")

METRIC_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": list(METRIC_TYPES)},
        "data_config": {"type": "string", "description": "name of a data_configs entry"},
        "sub_types": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "priority": {"type": "integer", "minimum": 1, "description": "1 ranks first; omit to not rank"},
                    "higher_is_better": {"type": "boolean"},
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
                           "prompt_tokens (128), new_tokens (128), warmup_num (1), repeat_test_num (5); memory: "
                           "prompt_tokens (32), new_tokens (16); greedy_agreement: new_tokens (32)",
            "properties": {
                "threshold": {"oneOf": [{"type": "number"}, {"const": "fit"}]},
                "warmup_num": {"type": "integer", "minimum": 0},
                "repeat_test_num": {"type": "integer", "minimum": 1},
                "sleep_num": {"type": "number", "minimum": 0},
                "pooling": {"enum": ["mean", "cls", "none"]},
                "prompt_tokens": {"type": "integer", "minimum": 1,
                                  "description": "generation/memory: prompt length in tokens (the data config's first "
                                                 "text repeated or cut to it; fixed ids without a data config)"},
                "new_tokens": {"type": "integer", "minimum": 1,
                               "description": "generation/memory/greedy_agreement: tokens decoded greedily after the prompt"},
            },
            "additionalProperties": False,
        },
        "user_config": {
            "type": "object",
            "properties": {"user_script": {"type": "string"}, "metric_func": {"type": "string"}},
            "additionalProperties": False,
        },
    },
    "required": ["name", "type", "sub_types"],
    "allOf": [{"if": {"properties": {"type": {"enum": ["perplexity", "greedy_agreement"]}}, "required": ["type"]},
               "then": {"required": ["data_config"]}}],
    "additionalProperties": False,
}


def higher_is_better(metric: dict, sub_type: dict) -> bool:
    if "higher_is_better" in sub_type:
        return sub_type["higher_is_better"]
    return METRIC_TYPES[metric["type"]].get(sub_type["name"], True)


def classification_scores(predictions: np.ndarray, targets: np.ndarray) -> dict:
    predictions, targets = np.asarray(predictions).ravel(), np.asarray(targets).ravel()
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
    return scores


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
