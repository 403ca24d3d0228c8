"""How OrtSessionParamsTuning measures and chooses (olive_systems.measure): every setting is timed
interleaved with ONNX Runtime's default in one process. Each timed call is one pass over the
workload (one request of every shape), counted as its weighted time per request, so every round
compares what the user's traffic costs under each setting. A setting replaces the default only
when it is faster beyond the confidence interval and its rounds agree (a sign test), and only
after MIN_ROUNDS rounds (fewer give no interval worth the name); refusing one that cannot be
`precision` faster takes fewer rounds (REFUSE_ROUNDS), since keeping the default is the safe side.
A thread count is never chosen on a busy machine: other processes' load makes fewer threads look
faster than they are on a quiet one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..measure import MIN_ROUNDS, Measurement, compare, progress_line, rounds_agree
from ..workload import shape_name

# A pass over a BERT workload varies by several percent from round to round on a shared 2-core VM:
# showing that a setting cannot be 2% faster did not settle in 15 s, 5% settles in the minimum rounds.
TUNING_PRECISION = 0.05
MEASURING_SCHEMA = {
    "workload": {"type": ["array", "null"], "default": None,
                 "items": {"type": "object", "properties": {
                     "batch_size": {"type": "integer", "minimum": 1}, "sequence_length": {"type": "integer", "minimum": 1},
                     "weight": {"type": "number", "exclusiveMinimum": 0}},
                     "required": ["sequence_length"], "additionalProperties": False},
                 "description": "shapes to time, each with its share of requests; null: the recipe's workload, "
                                "else batch 1 x dummy_sequence_length"},
    "budget_s": {"type": "number", "exclusiveMinimum": 0, "default": 15,
                 "description": "seconds for all the timing (warm-up included); each timed call is one request "
                                "of every shape"},
    "precision": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": TUNING_PRECISION,
                  "description": "a setting stops being timed once it is faster beyond the interval or cannot be "
                                 "faster than the default by more than this fraction"},
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
    calls = {name: {shape_name(shape): [] for shape in shapes} for name in arms}
    passes = {name: _workload_pass([(shape_name(shape), shape["weight"], make(shape["feed"])) for shape in shapes],
                                   calls[name]) for name, (_, make) in arms.items()}
    # Timing a setting stops once it is faster beyond the interval or cannot be faster by more than
    # `precision`: pinning down a setting that is not worth choosing would only cost time.
    measurement = compare(passes, DEFAULT, float(config["budget_s"]), warmup_num=config["warmup_num"],
                          max_calls=config.get("test_num"), precision=config["precision"], until="faster",
                          self_timed=True, on_progress=lambda message: log(progress_line(f"workload: {message}")))
    busiest = measurement.others_cpu
    busy = busiest is not None and busiest > config["busy_cores"]
    too_few = f"too few rounds to tell ({measurement.rounds} of the {MIN_ROUNDS} needed); a larger budget_s gives more"
    records, best, short = [], None, False
    for name, (settings, _) in arms.items():
        record = _record(name, measurement, calls[name])
        if name != DEFAULT:
            threads = settings["session_options"].get("intra_op_num_threads")
            low, high = record["ratio_interval"]
            if high >= 1:
                record["verdict"] = "not faster than the default beyond the interval"
            elif measurement.rounds < MIN_ROUNDS and low >= 1 - config["precision"]:  # refused (REFUSE_ROUNDS)
                record["verdict"] = f"not more than {config['precision']:.0%} faster than the default"
            elif measurement.rounds < MIN_ROUNDS:
                short = True
                record["verdict"] = f"not chosen: {too_few}"
            elif not rounds_agree(measurement.arms[name].matrix(), measurement.arms[DEFAULT].matrix()):
                record["verdict"] = "not chosen: faster on the interval, but too few of its rounds agree (a sign test)"
            elif busy and threads not in (None, 0, default_threads()):
                record["verdict"] = (f"faster, but measured while other processes kept {busiest:.2f} cores busy: "
                                     "a thread count is not chosen on a busy machine")
            else:
                record["verdict"] = "faster than the default beyond the interval"
                if best is None or record["ratio"] < best[1]["ratio"]:
                    best = (settings, record)
        records.append(record)
    if best is None:
        reason = "kept the default: " + (too_few if short else "no setting was faster beyond the interval" + (
            f" on an idle enough machine (others used {busiest:.2f} cores)" if busy else ""))
        return Choice(arms[DEFAULT][0], records, reason, busiest)
    best[1]["chosen"] = True
    return Choice(best[0], records, f"{best[1]['setting']}: {best[1]['ratio']:.3f}x the default "
                                    f"[{best[1]['ratio_interval'][0]:.3f}, {best[1]['ratio_interval'][1]:.3f}]", busiest)


def _workload_pass(shapes: list[tuple[str, float, Callable[[], object]]],
                   calls: dict[str, list[float]]) -> Callable[[], float]:
    """One request of every shape; returns the weighted seconds per request and keeps each shape's time."""
    total = sum(weight for _, weight, _ in shapes)

    def run() -> float:
        seconds = 0.0
        for label, weight, once in shapes:
            began = time.perf_counter()
            once()
            took = time.perf_counter() - began
            calls[label].append(took)
            seconds += weight * took
        return seconds / total
    return run


def _record(name: str, measurement: Measurement, calls: dict[str, list[float]]) -> dict:
    """A setting's ratio to the default (of the weighted time per request) with its interval; per
    shape, the median of its calls (warm-up and untimed calls included, the cold first one not)."""
    median = measurement.interval(name)[0]
    ratio, low, high = (1.0, 1.0, 1.0) if name == DEFAULT else measurement.ratio(name)
    return {"setting": name, "ratio": round(ratio, 4), "ratio_interval": [round(low, 4), round(high, 4)],
            "median_ms": round(median * 1000, 4), "rounds": measurement.rounds, "stopped": measurement.stopped,
            "by_shape": {label: {"median_ms": round(float(np.median(times[1:] or times)) * 1000, 4)}
                         for label, times in calls.items()},
            "chosen": False}
