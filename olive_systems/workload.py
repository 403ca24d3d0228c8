"""The workload: the input shapes a model will serve, each with its share of requests.

A recipe's top-level `workload` (or a timing metric's own) lists shapes with weights. Latency,
throughput and generation metrics time every shape and rank by the weighted figure (the expected
time per request over the mix; for throughput, samples over that time), and session tuning times
the same shapes, so the candidate and the settings that win are the ones for what will be served.
"""

from __future__ import annotations

import numpy as np

from .errors import RecipeError

WORKLOAD_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "description": "shapes the model will serve, each with its share of requests (weight); latency, throughput and "
                   "generation metrics and session tuning time every shape and rank by the weighted figure",
    "items": {
        "type": "object",
        "properties": {
            "batch_size": {"type": "integer", "minimum": 1, "default": 1},
            "sequence_length": {"type": "integer", "minimum": 1, "description": "encoders: tokens per sample"},
            "prompt_tokens": {"type": "integer", "minimum": 1, "description": "decoders: prompt length"},
            "new_tokens": {"type": "integer", "minimum": 2, "description": "decoders: tokens generated after the prompt"},
            "weight": {"type": "number", "exclusiveMinimum": 0, "default": 1,
                       "description": "share of requests of this shape (weights need not add up to 1)"},
        },
        "additionalProperties": False,
        "anyOf": [{"required": ["sequence_length"]}, {"required": ["prompt_tokens", "new_tokens"]}],
    },
}

# What each metric type needs of a shape.
NEEDS = {"latency": ("sequence_length",), "throughput": ("sequence_length",), "generation": ("prompt_tokens", "new_tokens")}


def normalized(shapes: list[dict]) -> list[dict]:
    """Defaults filled in (batch 1, weight 1), so equal workloads make equal cache keys."""
    return [{"batch_size": 1, "weight": 1, **shape} for shape in shapes]


def shape_name(shape: dict) -> str:
    """1x128 (batch x sequence), or p128+g64 (prompt + generated tokens) for decoders."""
    if "sequence_length" in shape:
        return f"{shape.get('batch_size', 1)}x{shape['sequence_length']}"
    return f"p{shape['prompt_tokens']}+g{shape['new_tokens']}"


def check_shapes(shapes: list[dict], metric_type: str, where: str) -> None:
    """A metric gets only shapes it can time: before any work, one error naming the shape."""
    for index, shape in enumerate(shapes):
        missing = [key for key in NEEDS.get(metric_type, ()) if key not in shape]
        if missing:
            raise RecipeError(f"{where}[{index}]: a {metric_type} metric times {' and '.join(NEEDS[metric_type])}, "
                              f"and this shape has no {', '.join(missing)}",
                              f"add {', '.join(missing)} to the shape, or give the metric its own workload")
    if metric_type == "generation" and any(shape.get("batch_size", 1) != 1 for shape in shapes):
        raise RecipeError(f"{where}: generation is timed at batch 1", "remove batch_size from the decoder's shapes")


def apply_workload(recipe: dict, name: str) -> None:
    """Hand the recipe's workload to every timing metric and every session tuning pass that has none
    of its own, normalized; check each metric's shapes."""
    from .evaluation.metrics import TIMING_METRICS

    default = recipe.get("workload")
    for evaluator_name, evaluator in recipe["evaluators"].items():
        for index, metric in enumerate(evaluator["metrics"]):
            if metric["type"] not in TIMING_METRICS:
                continue
            if metric.get("workload") or default:
                where = (f"{name}: evaluators.{evaluator_name}.metrics[{index}].workload" if metric.get("workload")
                         else f"{name}: workload")
                metric["workload"] = normalized(metric.get("workload") or default)
                check_shapes(metric["workload"], metric["type"], where)
    if default:
        for entry in recipe["passes"].values():
            if entry.get("type") == "OrtSessionParamsTuning":
                if entry.get("config") is None:
                    entry["config"] = {}
                config = entry["config"]
                if "workload" not in config:
                    encoder_shapes = [s for s in normalized(default) if "sequence_length" in s]
                    if encoder_shapes:
                        config["workload"] = encoder_shapes


def shape_feed(base: dict | None, input_names: list[str], shape: dict, dummy) -> dict:
    """Inputs of batch_size x sequence_length: the base feed's first row repeated or cut to the
    length (an attention mask all ones), or dummy(batch, sequence) without a base feed."""
    batch, length = shape["batch_size"], shape["sequence_length"]
    if base is None:
        return dummy(batch, length)
    feed = {}
    for name in input_names:
        if name not in base:
            continue
        row = np.asarray(base[name])[0]
        if "mask" in name:
            row = np.ones(length, dtype=row.dtype)
        feed[name] = np.tile(np.resize(row, length), (batch, 1))
    return feed
