"""Rank candidates by metric priority (1 first, then 2, ...); those that meet every goal rank first."""

from __future__ import annotations

from .evaluation.metrics import higher_is_better, meets_goal


def goals_of(metrics_config: list[dict]) -> dict:
    """metric key -> (goal, higher_is_better) for every sub-type that declares a goal."""
    return {
        f"{metric['name']}-{sub['name']}": (sub["goal"], higher_is_better(metric, sub))
        for metric in metrics_config
        for sub in metric["sub_types"]
        if "goal" in sub
    }


def missed_goals(metrics: dict, goals: dict, baseline: dict | None) -> list[str]:
    missed = []
    for key, (goal, higher) in goals.items():
        if key not in metrics:
            continue
        base = (baseline or {}).get(key, {}).get("value")
        if not meets_goal(goal, metrics[key]["value"], base, higher):
            missed.append(f"{key} {metrics[key]['value']:.4g} misses {goal['type']} {goal['value']}")
    return missed


def sort_key(metrics: dict, missed: list) -> tuple:
    values = tuple(-metrics[key]["value"] if metrics[key]["higher_is_better"] else metrics[key]["value"]
                   for key in priority_metrics(metrics))
    return (bool(missed), values)


def priority_metrics(metrics: dict) -> list[str]:
    """The metric keys that rank, highest priority first."""
    return [key for _, key in sorted((entry["priority"], key) for key, entry in metrics.items()
                                     if entry.get("priority", -1) > 0)]


def pareto_front(candidates: list[dict]) -> list[dict]:
    """Candidates no other candidate dominates on the priority metrics (as good on all, better on one)."""
    def oriented(candidate):
        metrics = candidate["metrics"]
        return [metrics[key]["value"] if metrics[key]["higher_is_better"] else -metrics[key]["value"]
                for key in keys]

    scored = [c for c in candidates if c["metrics"]]
    keys = [k for k in priority_metrics(scored[0]["metrics"]) if all(k in c["metrics"] for c in scored)] if scored else []
    if not keys:
        return []
    points = [(candidate, oriented(candidate)) for candidate in scored]
    return [c for c, p in points
            if not any(all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p)) for _, q in points)]


def rank(candidates: list[dict], goals: dict, baseline: dict | None) -> list[dict]:
    """Sets rank, meets_goals, missed_goals and pareto on each candidate dict; returns them in rank order."""
    for candidate in candidates:  # a candidate may carry its own accelerator's baseline
        candidate["missed_goals"] = missed_goals(candidate["metrics"], goals, candidate.get("baseline", baseline))
        candidate["meets_goals"] = not candidate["missed_goals"]
    ordered = sorted(candidates, key=lambda c: sort_key(c["metrics"], c["missed_goals"]))
    front = {id(c) for c in pareto_front(candidates)}
    for position, candidate in enumerate(ordered, start=1):
        candidate["rank"] = position
        candidate["pareto"] = id(candidate) in front
    return ordered


def rank_shapes(candidates: list[dict]) -> None:
    """With a workload, each shape of a timing figure (metrics[key]["by_shape"][shape]) gets the
    candidate's rank at that shape alone: those that meet every goal first, then by that shape's
    figure. It says which model to serve if only that shape were served."""
    keys = {key for c in candidates for key, entry in c["metrics"].items() if "by_shape" in entry}
    for key in sorted(keys):
        having = [c for c in candidates if "by_shape" in c["metrics"].get(key, {})]
        for candidate in having:  # a copy: an evaluation's metrics may be shared by candidates
            entry = candidate["metrics"][key]
            candidate["metrics"][key] = {**entry, "by_shape": {name: dict(v) for name, v in entry["by_shape"].items()}}
        for shape in sorted({s for c in having for s in c["metrics"][key]["by_shape"]}):
            scored = [c for c in having if shape in c["metrics"][key]["by_shape"]]

            def order(candidate, shape=shape):
                entry = candidate["metrics"][key]
                value = entry["by_shape"][shape]["value"]
                return bool(candidate["missed_goals"]), -value if entry["higher_is_better"] else value

            for position, candidate in enumerate(sorted(scored, key=order), start=1):
                candidate["metrics"][key]["by_shape"][shape]["rank"] = position
