"""Latency and throughput: of one model, or of several side by side.

Each workload shape is timed with olive_systems.measure (budgeted, with intervals), all the shapes
in one loop of rounds. Several models are timed interleaved (`time_together`): every round runs a
block of each model at each shape, so load that comes and goes falls on all of them alike and their
figures compare, which figures from separate jobs on a drifting machine do not. Each of them runs in
a worker process of its own, as it is served (timing_worker: sessions sharing a process disturbed
each other's order). The first model is the reference each ratio is taken to.
"""

from __future__ import annotations

import numpy as np

from ..measure import DEFAULT_PRECISION, compare_groups, progress_line, weighted
from ..workload import shape_feed, shape_name
from .metrics import METRIC_TYPES, metric_records

DEFAULT_BUDGET_S = 10.0  # seconds per model for all the workload's shapes
# What time_together can time; a generation metric times a whole decode loop, model by model.
SIDE_BY_SIDE_METRICS = ("latency", "throughput")
# sub-type -> the statistic of a [resamples, calls] array of seconds (vectorized for the bootstrap)
TIMING_SUBTYPES = {kind: tuple(METRIC_TYPES[kind]) for kind in SIDE_BY_SIDE_METRICS}


def timing_values(metric: dict, runners: dict, base: dict | None, timings: dict, log,
                  self_timed: bool = False) -> dict[str, tuple[dict, dict]]:
    """Per runner name: (each sub-type's weighted figure over the metric's workload or its one feed,
    details per sub-type: the interval and, with a workload, every shape's figure and interval; with
    several runners, each shape's ratio to the first). runners: name -> a runner whose timed(feed)
    gives the call to time (ModelRunner, WorkerRunner, a composite model's component runner).
    base: the data config's first feed, or None.
    timings: (data config, shape) -> Measurement, shared by the latency and throughput of a shape.
    self_timed: the runners' timed calls return the seconds their worker measured (WorkerRunner)."""
    config = metric.get("metric_config", {})
    names = list(runners)
    shapes = metric.get("workload")
    if not shapes:  # the data's first feed as it is, or each model's own dummy feed
        feed = base if base is not None else runners[names[0]].dummy_feed()
        value = np.asarray(next(iter(feed.values())))
        shapes = [{"batch_size": int(value.shape[0]), "sequence_length": int(value.shape[-1]), "weight": 1, "as_given": True}]
    reference = names[0] if len(names) > 1 else None
    key = {shape_name(shape): (metric.get("data_config"), shape_name(shape)) for shape in shapes}
    todo = {shape_name(shape): {name: runner.timed(_feed_for(runner, shape, base)) for name, runner in runners.items()}
            for shape in shapes if key[shape_name(shape)] not in timings}
    if todo:  # all its shapes in one loop of rounds: a passing state of the machine falls on each of them
        budget = float(config.get("budget_s", DEFAULT_BUDGET_S)) * len(names) * len(todo) / len(shapes)
        shown = metric["name"]
        found = compare_groups(todo, reference, budget, warmup_num=config.get("warmup_num", 10), self_timed=self_timed,
                               max_calls=config.get("repeat_test_num"), pause_s=config.get("sleep_num", 0),
                               precision=config.get("precision", DEFAULT_PRECISION),
                               until="ranked" if reference else "decided",
                               on_progress=lambda message: log(progress_line(f"{shown}: {message}")))
        timings.update({key[label]: measured for label, measured in found.items()})
    per_shape = [(shape, shape_name(shape), timings[key[shape_name(shape)]]) for shape in shapes]
    return {name: _figures(metric, name, reference, per_shape) for name in names}


def _figures(metric: dict, name: str, reference: str | None, per_shape: list) -> tuple[dict, dict]:
    kind = metric["type"]
    values, details = {}, {}
    declared = {s["name"] for s in metric["sub_types"]}
    for sub in TIMING_SUBTYPES[kind]:  # every one, so an unknown sub-type's error can list them
        if sub not in declared:  # its figure only: no interval to bootstrap
            figures = [(shape, _timing_stat(kind, sub, shape["batch_size"])(measured.arms[name].matrix().reshape(1, -1))[0])
                       for shape, _, measured in per_shape]
            values[sub] = round(float(_combine(kind, figures)), 4)
            continue
        figures = []
        for shape, label, measured in per_shape:
            value, low, high = measured.interval(name, _timing_stat(kind, sub, shape["batch_size"]))
            figures.append((shape, label, value, sorted((low, high)), measured))
        values[sub] = round(_combine(kind, [(f[0], f[2]) for f in figures]), 4)
        low = _combine(kind, [(f[0], f[3][0]) for f in figures])
        high = _combine(kind, [(f[0], f[3][1]) for f in figures])
        details[sub] = {"interval": [round(low, 4), round(high, 4)]}
        if metric.get("workload"):
            details[sub]["by_shape"] = {label: _shape_record(shape, name, reference, value, bounds, measured)
                                        for shape, label, value, bounds, measured in figures}
    return values, details


def _shape_record(shape: dict, name: str, reference: str | None, value: float, bounds: list, measured) -> dict:
    record = {"value": round(value, 4), "interval": [round(bounds[0], 4), round(bounds[1], 4)],
              "weight": shape["weight"], "batch_size": shape["batch_size"], "sequence_length": shape["sequence_length"],
              "rounds": measured.rounds, "calls": len(measured.arms[name].samples), "seconds": round(measured.seconds, 3),
              "stopped": measured.stopped,
              "others_cpu": None if measured.others_cpu is None else round(measured.others_cpu, 3),
              "speed_spread": _speed_spread(measured, reference or name)}
    if reference is not None and name != reference:  # medians of the same rounds: drift cancels out
        ratio, low, high = measured.ratio(name)
        record.update(timed_with=len(measured.arms), median_ratio=round(ratio, 4),
                      median_ratio_interval=[round(low, 4), round(high, 4)])
    elif reference is not None:
        record.update(timed_with=len(measured.arms))
    return record


def _speed_spread(measured, name: str) -> float:
    """How far one model's per-round medians ranged while a shape was timed: the machine's own speed
    changing under the timing. Their 80th percentile over their 20th, minus 1, so that one stray round
    (a round at 8x128 may be a single call) does not count. A close order can differ between two such
    speeds (a 2-core VM ran at two speeds for minutes at a time, and two INT8 models swapped places
    between them)."""
    low, high = np.percentile(np.median(measured.arms[name].matrix(), axis=1), [20, 80])
    return round(float(high / low - 1), 4) if low > 0 else 0.0


def time_together(models: list, metrics: list[dict], first_feeds: dict, execution_provider: str, log) -> dict:
    """models: [(name, ModelRef)], the reference first; first_feeds: data config name -> its first feed.
    Returns name -> its timing metrics (as evaluate() gives them), or name -> {"error": message} for a
    model that could not be opened or run at one of the shapes: it is left out, the others are timed."""
    from .timing_worker import WorkerRunner

    workers = {}
    try:
        for name, model in models:  # they start side by side
            workers[name] = WorkerRunner(model, execution_provider)
        return _time_workers(workers, metrics, first_feeds, log)
    finally:
        for worker in workers.values():
            worker.close()


def _time_workers(workers: dict, metrics: list[dict], first_feeds: dict, log) -> dict:
    runners, errors = {}, {}
    for name, worker in workers.items():
        try:
            runners[name] = worker.ready()
        except Exception as exc:  # noqa: BLE001 - reported against this model; the others go on
            errors[name] = f"opening it failed: {_first_line(exc)}"
    tried = set()  # (data config, shape): latency and throughput of a shape share their calls
    for metric in metrics:  # one call of each model at each shape: a model that fails is left out here
        base = first_feeds.get(metric.get("data_config"))
        for shape in metric.get("workload") or [None]:
            if (metric.get("data_config"), shape and shape_name(shape)) in tried:
                continue
            tried.add((metric.get("data_config"), shape and shape_name(shape)))
            for name, runner in list(runners.items()):
                try:
                    runner(_feed_for(runner, shape, base))
                except Exception as exc:  # noqa: BLE001
                    errors[name] = f"running it{f' at {shape_name(shape)}' if shape else ''} failed: {_first_line(exc)}"
                    del runners[name]
    results = {name: {"error": message} for name, message in errors.items()}
    if not runners:
        return results
    if errors:
        log(f"timing without {', '.join(errors)}: {'; '.join(errors.values())}")
    timings: dict = {}
    found = {name: {} for name in runners}
    for metric in metrics:
        base = first_feeds.get(metric.get("data_config"))
        for name, (values, details) in timing_values(metric, runners, base, timings, log, self_timed=True).items():
            found[name].update(metric_records(metric, values, details))
    return {**found, **results}


def _feed_for(runner, shape: dict | None, base: dict | None) -> dict:
    """One model's feed at a workload shape (cut from base, or made up), or without a workload
    (shape None, or as_given) the base feed as it is, else the model's own dummy feed."""
    if shape is None or shape.get("as_given"):
        feed = base if base is not None else runner.dummy_feed()
        return {k: v for k, v in feed.items() if k in runner.input_names}
    return shape_feed(base, runner.input_names, shape, runner.dummy_at)


def _first_line(exc: Exception) -> str:
    kind = getattr(exc, "kind", type(exc).__name__)  # a worker's exception by its own type's name
    return f"{kind}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _timing_stat(kind: str, sub: str, batch: int):
    if kind == "latency":
        if sub == "avg":
            return lambda rows: rows.mean(axis=1) * 1000
        if sub in ("min", "max"):
            return lambda rows: getattr(rows, sub)(axis=1) * 1000
        return lambda rows: np.percentile(rows, float(sub[1:]), axis=1) * 1000
    # throughput in samples/s: the q-th percentile of per-call throughput is batch over the (100-q)-th of time
    if sub == "avg":
        return lambda rows: batch / rows.mean(axis=1)
    if sub == "min":
        return lambda rows: batch / rows.max(axis=1)
    if sub == "max":
        return lambda rows: batch / rows.min(axis=1)
    return lambda rows: batch / np.percentile(rows, 100 - float(sub[1:]), axis=1)


def _combine(kind: str, figures: list[tuple[dict, float]]) -> float:
    """A workload's figure: weights are shares of requests. Latency: the expected ms per request;
    throughput: samples served over the time they take."""
    weights = [shape["weight"] for shape, _ in figures]
    if kind == "latency":
        return weighted([value for _, value in figures], weights)
    samples = sum(w * shape["batch_size"] for w, (shape, _) in zip(weights, figures))
    seconds = sum(w * shape["batch_size"] / value for w, (shape, value) in zip(weights, figures))
    return samples / seconds


