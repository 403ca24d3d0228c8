"""How OrtSessionParamsTuning measures and chooses (olive_systems.measure): every setting is timed
interleaved with ONNX Runtime's default in one process, on every shape of the workload, and a
setting replaces the default only when it is faster beyond the confidence interval of the
weighted ratio. A thread count is never chosen on a busy machine: other processes' load makes
fewer threads look faster than they are on a quiet one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from ..measure import DEFAULT_PRECISION, Measurement, compare, progress_line, weighted
from ..workload import shape_name

MEASURING_SCHEMA = {
    "workload": {"type": ["array", "null"], "default": None,
                 "items": {"type": "object", "properties": {
                     "batch_size": {"type": "integer", "minimum": 1}, "sequence_length": {"type": "integer", "minimum": 1},
                     "weight": {"type": "number", "exclusiveMinimum": 0}},
                     "required": ["sequence_length"], "additionalProperties": False},
                 "description": "shapes to time, each with its share of requests; null: the recipe's workload, "
                                "else batch 1 x dummy_sequence_length"},
    "budget_s": {"type": "number", "exclusiveMinimum": 0, "default": 15,
                 "description": "seconds for all the timing (warm-up included), shared by the shapes"},
    "precision": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": DEFAULT_PRECISION,
                  "description": "a comparison is resolved once its ratio is known to this relative half-width"},
    "busy_cores": {"type": "number", "minimum": 0, "default": 0.5,
                   "description": "other processes using more cores than this make the machine busy: thread counts "
                                  "other than the default's are then not chosen"},
}
DEFAULT = "default"


def default_settings(execution_provider: str) -> dict:
    """What a session gets without tuning: ONNX Runtime's own defaults."""
    return {"execution_provider": [[execution_provider, {}]], "session_options": {}, "io_bind": False}


def default_threads() -> int:
    """The intra-op thread count ONNX Runtime picks by default here (one per core it may use)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Choice:
    settings: dict
    records: list[dict]  # per setting: ratio to the default, its interval, per-shape medians, why (not) chosen
    reason: str
    others_cpu: float | None


def choose(arms: dict[str, tuple[dict, Callable[[dict], Callable[[], object]]]], shapes: list[dict],
           config: dict, log: Callable[[str], None]) -> Choice:
    """arms: name -> (settings, feed -> run-once callable); DEFAULT must be one of them. shapes carry
    batch_size, sequence_length, weight and the feed to time with ("feed")."""
    budget = float(config["budget_s"]) / len(shapes)
    measured: list[tuple[dict, Measurement]] = []
    for shape in shapes:
        label = shape_name(shape)
        runs = {name: make(shape["feed"]) for name, (_, make) in arms.items()}
        measurement = compare(runs, DEFAULT, budget, warmup_num=config["warmup_num"], max_calls=config.get("test_num"),
                              precision=config["precision"],
                              on_progress=lambda message, label=label: log(progress_line(f"{label}: {message}")))
        measured.append((shape, measurement))
    others = [m.others_cpu for _, m in measured if m.others_cpu is not None]
    busiest = max(others) if others else None
    busy = busiest is not None and busiest > config["busy_cores"]
    records, best = [], None
    for name, (settings, _) in arms.items():
        record = _record(name, settings, measured)
        if name != DEFAULT:
            threads = settings["session_options"].get("intra_op_num_threads")
            if record["ratio_interval"][1] >= 1:
                record["verdict"] = "not faster than the default beyond the interval"
            elif busy and threads not in (None, 0, default_threads()):
                record["verdict"] = (f"faster, but measured while other processes kept {busiest:.2f} cores busy: "
                                     "a thread count is not chosen on a busy machine")
            else:
                record["verdict"] = "faster than the default beyond the interval"
                if best is None or record["ratio"] < best[1]["ratio"]:
                    best = (settings, record)
        records.append(record)
    if best is None:
        reason = "kept the default: no setting was faster beyond the interval" + (
            f" on an idle enough machine (others used {busiest:.2f} cores)" if busy else "")
        return Choice(arms[DEFAULT][0], records, reason, busiest)
    best[1]["chosen"] = True
    return Choice(best[0], records, f"{best[1]['setting']}: {best[1]['ratio']:.3f}x the default "
                                    f"[{best[1]['ratio_interval'][0]:.3f}, {best[1]['ratio_interval'][1]:.3f}]", busiest)


def _record(name: str, settings: dict, measured: list[tuple[dict, Measurement]]) -> dict:
    """A setting's weighted ratio to the default: the ratio of the time the workload takes, each
    shape weighted by its share of requests times the default's time on it."""
    medians, weights, shares, ratios, lows, highs, by_shape = [], [], [], [], [], [], {}
    for shape, measurement in measured:
        median = measurement.interval(name)[0]
        share = shape["weight"] * measurement.interval(DEFAULT)[0]
        ratio, low, high = (1.0, 1.0, 1.0) if name == DEFAULT else measurement.ratio(name)
        medians.append(median)
        weights.append(shape["weight"])
        shares.append(share)
        ratios.append(ratio)
        lows.append(low)
        highs.append(high)
        by_shape[shape_name(shape)] = {
            "median_ms": round(median * 1000, 4), "ratio": round(ratio, 4), "ratio_interval": [round(low, 4), round(high, 4)],
            "rounds": measurement.rounds, "stopped": measurement.stopped}
    return {"setting": name, "ratio": round(weighted(ratios, shares), 4),
            "ratio_interval": [round(weighted(lows, shares), 4), round(weighted(highs, shares), 4)],
            "median_ms": round(weighted(medians, weights) * 1000, 4),
            "by_shape": by_shape, "chosen": False}
