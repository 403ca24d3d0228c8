"""Search over pass settings.

A pass config value may be a search space instead of a value: `{choices: [a, b, ...]}`, or for a
number `{range: [low, high], step: s}`. `engine.search_strategy` (Olive's keys) says how to explore
each pass flow's space:

- execution_order `joint`: every point sets all of the flow's searched settings and runs the whole
  flow; `pass-by-pass`: the flow is searched one searched pass at a time, each stage's best setting
  fixed before the next stage (a stage's candidates run the flow up to the next searched pass).
- search_algorithm `exhaustive` (or `sequential`): the grid in order; `random`: num_samples
  distinct points drawn with `seed`; `tpe`: optuna's TPE sampler, which learns from each result.
- stop rules: `stop_when_goals_met`, `max_iter` (points), `max_time` (seconds).

A Search hands out trials (ask) and learns from their candidates (tell); the engine runs trials
side by side, so asking never waits for a result unless the algorithm needs one.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import RecipeError

SEARCH_ALGORITHMS = ["exhaustive", "sequential", "random", "tpe"]
DEFAULT_NUM_SAMPLES = 10

STRATEGY_SCHEMA = {
    "oneOf": [
        {"type": "null"},
        {
            "type": "object",
            "description": "how pass-config search spaces ({choices: [...]} or {range: [low, high], step}) are explored",
            "properties": {
                "execution_order": {"enum": ["joint", "pass-by-pass"], "default": "joint"},
                "search_algorithm": {"enum": SEARCH_ALGORITHMS, "default": "exhaustive"},
                "search_algorithm_config": {
                    "type": "object",
                    "properties": {
                        "num_samples": {"type": "integer", "minimum": 1,
                                        "description": f"random/tpe: points per space (default {DEFAULT_NUM_SAMPLES})"},
                        "seed": {"type": "integer", "default": 0},
                    },
                    "additionalProperties": False,
                },
                "stop_when_goals_met": {"type": "boolean", "default": False,
                                        "description": "stop a search once a candidate meets every goal"},
                "max_iter": {"type": "integer", "minimum": 1, "description": "at most this many points per search"},
                "max_time": {"type": "number", "exclusiveMinimum": 0,
                             "description": "seconds; no new point starts after this"},
            },
            "additionalProperties": False,
        },
    ]
}


def searchable(schema: dict) -> dict:
    """A pass-config property schema that also accepts a search space over its values."""
    types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    spaces = [{"type": "object", "properties": {"choices": {"type": "array", "items": schema, "minItems": 1}},
               "required": ["choices"], "additionalProperties": False}]
    if {"integer", "number"} & set(types):
        spaces.append({"type": "object", "properties": {
            "range": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            "step": {"type": "number", "exclusiveMinimum": 0}}, "required": ["range"], "additionalProperties": False})
    return {"anyOf": [schema, *spaces], "description": schema.get("description", "")}


def is_space(value) -> bool:
    return isinstance(value, dict) and set(value) in ({"choices"}, {"range"}, {"range", "step"})


@dataclass
class Dimension:
    pass_name: str
    param: str
    space: dict
    values: list = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return self.pass_name, self.param


def dimensions(flow: list[str], passes: dict, where: str = "passes") -> list[Dimension]:
    """The searched settings of a flow, in flow order; each pass counted once."""
    dims = []
    for pass_name in dict.fromkeys(flow):
        for param, value in (passes[pass_name].get("config") or {}).items():
            if is_space(value):
                dims.append(Dimension(pass_name, param, value, _values(value, f"{where}.{pass_name}.config.{param}")))
    return dims


def _values(space: dict, where: str) -> list:
    if "choices" in space:
        return list(space["choices"])
    low, high = space["range"]
    if high < low:
        raise RecipeError(f"{where}: range [{low}, {high}] is empty", "give the range as [low, high]")
    integral = all(float(v).is_integer() for v in (low, high, space.get("step", 1)))
    if "step" not in space and not integral:
        raise RecipeError(f"{where}: a range of real numbers needs a step", "add step: (e.g. 0.1)")
    step = space.get("step", 1)
    count = int((high - low) / step + 1e-9) + 1
    return [int(low + i * step) if integral else round(low + i * step, 12) for i in range(count)]


@dataclass
class Trial:
    number: int
    point: dict  # pass name -> {param: value}
    upto: int  # how many passes of the flow this trial runs
    values: dict = field(default_factory=dict)  # (pass, param) -> value sampled in this trial
    token: object = None  # the sampler's own handle (an optuna trial)


class Search:
    """One pass flow's search on one accelerator."""

    def __init__(self, flow: list[str], passes: dict, strategy: dict | None, score: Callable[[dict], tuple],
                 has_goals: bool, timed_goals: bool = False):
        """timed_goals: a goal is on a latency or throughput figure."""
        strategy = strategy or {}
        self.flow, self.score, self.has_goals, self.timed_goals = flow, score, has_goals, timed_goals
        self.algorithm = strategy.get("search_algorithm", "exhaustive")
        config = strategy.get("search_algorithm_config") or {}
        self.num_samples, self.seed = config.get("num_samples", DEFAULT_NUM_SAMPLES), config.get("seed", 0)
        self.stop_when_goals_met = strategy.get("stop_when_goals_met", False)
        self.max_iter, self.max_time = strategy.get("max_iter"), strategy.get("max_time")
        dims = dimensions(flow, passes)
        if strategy.get("execution_order") == "pass-by-pass" and dims:
            by_pass = {}
            for dim in dims:
                by_pass.setdefault(dim.pass_name, []).append(dim)
            self.stages = list(by_pass.values())
        else:
            self.stages = [dims]
        self.fixed: dict[tuple, object] = {}
        self.stage, self.asked, self.pending, self.stopped = 0, 0, 0, False
        self.results: list[tuple[Trial, dict]] = []
        self.started = time.monotonic()
        self.sampler = self._sampler(self.stages[0])

    @property
    def searched(self) -> bool:
        return any(self.stages)

    @property
    def learns(self) -> bool:
        """Later trials depend on earlier candidates' figures, so each is needed as soon as it is made
        (stopping once the goals are met needs a candidate's timing only when a goal is on one)."""
        return self.searched and (self.algorithm == "tpe" or len(self.stages) > 1
                                  or (self.stop_when_goals_met and self.timed_goals))

    @property
    def done(self) -> bool:
        return self.pending == 0 and (self.stopped or self.sampler is None)

    def ask(self) -> Trial | None:
        """The next trial to run, or None: finished, or waiting for running trials to end a stage."""
        if self.stopped or self.sampler is None:
            return None
        if (self.max_iter and self.asked >= self.max_iter) or (
                self.max_time and time.monotonic() - self.started > self.max_time):
            self.stopped = True
            return None
        sampled = self.sampler.next()
        if sampled is None:
            if self.pending:
                return None
            if not self._next_stage():
                return None
            return self.ask()
        values, token = sampled
        values = {**self.fixed, **values}
        point: dict[str, dict] = {}
        for (pass_name, param), value in values.items():
            point.setdefault(pass_name, {})[param] = value
        trial = Trial(self.asked, point, self._upto(), values, token)
        self.asked += 1
        self.pending += 1
        return trial

    def tell(self, trial: Trial, candidate: dict | None) -> None:
        """A trial's candidate (None when it failed)."""
        self.pending -= 1
        self.sampler.tell(trial, candidate)
        if candidate is not None:
            self.results.append((trial, candidate))
            last_stage = self.stage == len(self.stages) - 1
            if self.stop_when_goals_met and self.has_goals and last_stage and candidate["meets_goals"]:
                self.stopped = True

    def _upto(self) -> int:
        if self.stage + 1 < len(self.stages):
            return self.flow.index(self.stages[self.stage + 1][0].pass_name)
        return len(self.flow)

    def _next_stage(self) -> bool:
        """Fix the finished stage's best setting and start sampling the next one."""
        stage_results = [(t, c) for t, c in self.results if t.upto == self._upto()]
        if self.stage + 1 >= len(self.stages) or not stage_results:
            self.sampler = None
            return False
        best_trial, _ = min(stage_results, key=lambda tc: self.score(tc[1]))
        self.fixed = dict(best_trial.values)
        self.stage += 1
        self.sampler = self._sampler(self.stages[self.stage])
        return True

    def _sampler(self, dims: list[Dimension]):
        if self.algorithm == "random":
            return RandomSampler(dims, self.num_samples, self.seed + self.stage)
        if self.algorithm == "tpe" and dims:
            return TpeSampler(dims, self.num_samples, self.seed + self.stage, self.score)
        return GridSampler(dims)


class GridSampler:
    """Every point of the grid, in order (the first dimension changes slowest)."""

    def __init__(self, dims: list[Dimension]):
        self.keys = [d.key for d in dims]
        self._points = itertools.product(*(d.values for d in dims))

    def next(self) -> tuple[dict, None] | None:
        point = next(self._points, None)
        return None if point is None else (dict(zip(self.keys, point)), None)

    def tell(self, trial, candidate) -> None:
        pass


class RandomSampler:
    """num_samples distinct grid points, drawn with a seed (the same seed gives the same points)."""

    def __init__(self, dims: list[Dimension], num_samples: int, seed: int):
        self.dims = dims
        sizes = [len(d.values) for d in dims]
        total = math.prod(sizes)
        self._indices = iter(random.Random(seed).sample(range(total), min(num_samples, total)))
        self._sizes = sizes

    def next(self) -> tuple[dict, None] | None:
        index = next(self._indices, None)
        if index is None:
            return None
        point = {}
        for dim, size in zip(reversed(self.dims), reversed(self._sizes)):  # mixed-radix decode
            index, digit = divmod(index, size)
            point[dim.key] = dim.values[digit]
        return dict(reversed(list(point.items()))), None

    def tell(self, trial, candidate) -> None:
        pass


class TpeSampler:
    """optuna's TPE over the dimensions. The objective is the priority-1 metric; a candidate that
    misses a goal is infeasible (an optuna constraint), a failed one is a failed trial."""

    def __init__(self, dims: list[Dimension], num_samples: int, seed: int, score: Callable[[dict], tuple]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dims, self.remaining, self.score = dims, num_samples, score
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, num_samples))
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        self._trials: dict[int, object] = {}

    def next(self) -> tuple[dict, object] | None:
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        trial = self.study.ask()
        point = {}
        for dim in self.dims:
            name = f"{dim.pass_name}.{dim.param}"
            if "range" in dim.space and all(isinstance(v, int) for v in dim.values):
                point[dim.key] = trial.suggest_int(name, dim.values[0], dim.values[-1], step=dim.space.get("step", 1))
            elif "range" in dim.space:
                point[dim.key] = trial.suggest_float(name, dim.values[0], dim.values[-1], step=dim.space["step"])
            else:  # optuna stores categorical choices by index, so any JSON value works
                point[dim.key] = dim.values[trial.suggest_categorical(name, list(range(len(dim.values))))]
        return point, trial

    def tell(self, trial: Trial, candidate) -> None:
        import optuna

        if candidate is None:
            self.study.tell(trial.token, state=optuna.trial.TrialState.FAIL)
            return
        missed, values = self.score(candidate)
        trial.token.set_constraint("goals", 1.0 if missed else -1.0)
        self.study.tell(trial.token, values[0] if values else 0.0)
