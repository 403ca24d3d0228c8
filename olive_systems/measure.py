"""Timing that survives a noisy machine.

A busy neighbour makes every call slower while it runs; timing one model, then another, compares
two different machines. So the comparisons that decide something (a candidate against its
reference, a session setting against the default) run *interleaved* in one process: each round
runs a short block of calls of every arm, in a shuffled order, so load that comes and goes falls
on all arms alike. With several groups of arms (the same models at each workload shape,
compare_groups), every round cycles through the groups, so a state of the machine that lasts a while
falls on part of every group's rounds, not on all of one group's. Rounds go on until the answer is
resolved or the time budget is spent:

- an arm's ratio to the reference is resolved when its confidence interval clears 1 and the rounds
  agree on it (a sign test: one is faster) or the interval lies within `precision` of the estimate
  (they are the same to that precision);
- a lone arm (measure()) is resolved when its median is known to `precision`.

Intervals are percentile-bootstrap intervals that resample whole rounds, and for a ratio the same
rounds of both arms together, so drift between rounds widens the interval instead of biasing it.

Load that stays for the whole measurement cannot be interleaved away: `others_cpu` records how
many cores other processes used meanwhile, so a caller can refuse to trust a thread-count decision
made on a busy machine.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DEFAULT_CONFIDENCE = 0.95
DEFAULT_PRECISION = 0.02  # relative half-width at which a measurement counts as resolved
# Seconds of calls per arm per round: short blocks interleave load finely. Interleaved arms take longer
# blocks, since each block starts with an untimed call (see compare).
BLOCK_S, INTERLEAVED_BLOCK_S = 0.05, 0.2
MAX_BLOCK = 20
MIN_ROUNDS = 5  # five rounds all on one side of 1: a sign test's p = 1/32
SIGN_TEST_P = 1 / 32  # one side wins beyond the interval only if the rounds agree this surely (rounds_agree)
# Keeping the reference needs less evidence than replacing it (until="faster"): an arm that cannot be
# `precision` faster is settled after this many rounds; one faster beyond the interval after MIN_ROUNDS.
REFUSE_ROUNDS = 3
UNTIL = ("decided", "faster", "ranked")
CHECK_RESAMPLES = 300  # bootstrap resamples while deciding whether to go on
FINAL_RESAMPLES = 1000


@dataclass
class Arm:
    """One thing being timed: its calls, round by round (each round a block of equal size)."""

    name: str
    run: Callable[[], object]
    block: int = 1
    rounds: list[list[float]] = field(default_factory=list)

    def matrix(self) -> np.ndarray:
        """[rounds, block] seconds."""
        return np.asarray(self.rounds, dtype=np.float64).reshape(len(self.rounds), self.block)

    @property
    def samples(self) -> list[float]:
        return [t for block in self.rounds for t in block]


def bootstrap(matrix: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], confidence: float = DEFAULT_CONFIDENCE,
              resamples: int = FINAL_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of stat over a [rounds, calls] matrix, resampling whole rounds.
    stat takes a [resamples, n] array and returns one value per row."""
    rounds = matrix.shape[0]
    estimate = float(stat(matrix.reshape(1, -1))[0])
    if rounds < 2:
        return estimate, estimate, estimate
    index = np.random.default_rng(seed).integers(0, rounds, size=(resamples, rounds))
    values = stat(matrix[index].reshape(resamples, -1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return estimate, float(low), float(high)


def ratio_interval(numerator: np.ndarray, denominator: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                   resamples: int = FINAL_RESAMPLES, seed: int = 0, q: float = 50) -> tuple[float, float, float]:
    """(ratio, low, high) of the q-th percentiles of two [rounds, calls] matrices timed in the same
    rounds: the same rounds of both are resampled together (a paired bootstrap)."""
    rounds = min(len(numerator), len(denominator))
    numerator, denominator = numerator[:rounds], denominator[:rounds]
    ratio = float(np.percentile(numerator, q) / np.percentile(denominator, q))
    if rounds < 2:
        return ratio, ratio, ratio
    index = np.random.default_rng(seed).integers(0, rounds, size=(resamples, rounds))
    top = np.percentile(numerator[index].reshape(resamples, -1), q, axis=1)
    bottom = np.percentile(denominator[index].reshape(resamples, -1), q, axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(top / bottom, [tail, 100 - tail])
    return ratio, float(low), float(high)


def percentile_stat(q: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rows: np.percentile(rows, q, axis=1)


@dataclass
class Measurement:
    """What compare() / measure() found: every arm's calls, and how the measuring ended."""

    arms: dict[str, Arm]
    reference: str | None
    seconds: float
    stopped: str  # "resolved", "budget" or "max_calls"
    others_cpu: float | None  # cores other processes kept busy meanwhile (None: not known here)
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def rounds(self) -> int:
        return min((len(arm.rounds) for arm in self.arms.values()), default=0)

    def interval(self, name: str, stat: Callable[[np.ndarray], np.ndarray] = percentile_stat(50),
                 resamples: int = FINAL_RESAMPLES) -> tuple[float, float, float]:
        """(estimate, low, high) in seconds of a statistic of one arm's calls (default: the median)."""
        return bootstrap(self.arms[name].matrix(), stat, self.confidence, resamples)

    def ratio(self, name: str, resamples: int = FINAL_RESAMPLES) -> tuple[float, float, float]:
        """(ratio, low, high) of an arm's median to the reference's median (< 1: the arm is faster)."""
        if self.reference is None:
            raise ValueError("a lone measurement has no reference to compare with")
        return ratio_interval(self.arms[name].matrix(), self.arms[self.reference].matrix(), self.confidence, resamples)

    def summary(self) -> dict:
        """A JSON-ready record: per arm the median (ms) and its interval, and the ratio to the reference."""
        arms = {}
        for name in self.arms:
            median, low, high = self.interval(name)
            entry = {"median_ms": round(median * 1000, 4), "interval_ms": [round(low * 1000, 4), round(high * 1000, 4)],
                     "calls": len(self.arms[name].samples)}
            if self.reference is not None and name != self.reference:
                ratio, r_low, r_high = self.ratio(name)
                entry.update(ratio=round(ratio, 4), ratio_interval=[round(r_low, 4), round(r_high, 4)])
            arms[name] = entry
        return {"arms": arms, "reference": self.reference, "rounds": self.rounds, "seconds": round(self.seconds, 3),
                "stopped": self.stopped, "confidence": self.confidence,
                "others_cpu": None if self.others_cpu is None else round(self.others_cpu, 3)}


class _CpuWatch:
    """Cores other processes used over a span of wall time (Linux /proc/stat; None elsewhere)."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                fields = [float(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / ticks  # minus idle and iowait
        own = os.times()
        return busy, own.user + own.system, time.perf_counter()

    def others(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or end[2] - self.start[2] <= 0:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self.start))
        return max(0.0, (busy - own) / wall)


def compare(arms: dict[str, Callable[[], object]], reference: str | None, budget_s: float,
            **options) -> Measurement:
    """Time the arms interleaved until every ratio to `reference` is resolved (or, with one arm and
    no reference, until its median is known to `precision`), the budget is spent, or an arm has made
    max_calls timed calls. until "decided": each arm against the reference, resolved once the ratio
    clears 1 or is 1 to `precision` (is it faster?); "faster": each arm against the reference, resolved
    once it is faster beyond the interval or cannot be faster by more than `precision` (is it worth
    choosing?); "ranked": each arm against the next faster one, so the order of all arms is known,
    arms equal to `precision` counting as ties. Warm-up is part of the budget (at most a fifth of
    it). pause_s: a sleep after each timed call, not timed.
    self_timed: each run returns the seconds it counts for (a pass over a workload returns its
    weighted time), and that, not its wall time, is the figure."""
    return compare_groups({"": arms}, reference, budget_s, **options)[""]


def compare_groups(groups: dict[str, dict[str, Callable[[], object]]], reference: str | None, budget_s: float, *,
                   warmup_num: int = 5, max_calls: int | None = None, precision: float = DEFAULT_PRECISION,
                   confidence: float = DEFAULT_CONFIDENCE, min_rounds: int = MIN_ROUNDS,
                   on_progress: Callable[[str], None] | None = None, seed: int = 0, pause_s: float = 0.0,
                   until: str = "decided", self_timed: bool = False) -> dict[str, Measurement]:
    """compare() for several groups of arms at once (the same models at each workload shape): every
    round cycles through all the groups still unresolved, so a change of machine state that lasts a
    while falls on some rounds of every group instead of on all of one group's. Each group stops
    being timed once resolved; the budget is shared. Returns group -> its Measurement."""
    if until not in UNTIL:
        raise ValueError(f"until must be one of {', '.join(map(repr, UNTIL))}, not {until!r}")
    for arms in groups.values():
        if reference is not None and reference not in arms:
            raise ValueError(f"reference '{reference}' is not one of the arms {sorted(arms)}")
    started = time.perf_counter()
    watch = _CpuWatch()
    order = random.Random(seed)
    timed = {group: {name: Arm(name, run) for name, run in arms.items()} for group, arms in groups.items()}
    every_arm = [arm for arms in timed.values() for arm in arms.values()]
    # Arms compared with each other; one model alone at several shapes is not (nor warmed between them).
    interleaved = any(len(arms) > 1 for arms in timed.values())
    warm_until = started + budget_s / 5
    shown = _shown(groups)
    if on_progress:
        on_progress(f"timing {shown}: warming up ({budget_s:g} s budget)")
    warm: dict[int, float] = {}  # an arm's last warm-up call, if it was not its first (a cold call)
    for arm in every_arm:  # warm-up; its last call's wall time sizes the arm's block
        for call in range(max(warmup_num, 1)):
            if call and time.perf_counter() > warm_until:
                break
            began = time.perf_counter()
            counted = _call(arm.run, self_timed=self_timed)
            wall = time.perf_counter() - began
            if call:
                warm[id(arm)] = counted
        block_s = INTERLEAVED_BLOCK_S if interleaved else BLOCK_S
        arm.block = max(1, min(MAX_BLOCK, int(block_s / max(wall, 1e-6))))
        if max_calls:
            arm.block = min(arm.block, max(1, max_calls // min_rounds))
    stopped = {group: "budget" for group in timed}
    ended: dict[str, float] = {}
    last_report, round_s = started, 0.0
    if time.perf_counter() - started >= budget_s:
        # Calls slower than the budget: one warm call each is all there is time for (the last
        # warm-up call where there was one, else one more call: never a cold first call).
        for arm in every_arm:
            arm.block = 1
            arm.rounds.append([warm[id(arm)] if id(arm) in warm else _call(arm.run, pause_s, self_timed)])
    open_groups = list(timed)
    while open_groups and time.perf_counter() - started < budget_s:
        began = time.perf_counter()
        for group in order.sample(open_groups, len(open_groups)) if len(open_groups) > 1 else open_groups:
            names = list(timed[group])
            order.shuffle(names)
            for name in names:
                arm = timed[group][name]
                if interleaved:
                    # The first call after another arm ran meets caches it filled and its thread pool still
                    # spinning: measured, it made a BERT export 18% slower than alone. It is not timed.
                    arm.run()
                arm.rounds.append([_call(arm.run, pause_s, self_timed) for _ in range(arm.block)])
        now = time.perf_counter()
        round_s = max(round_s * 0.7, now - began)  # a pessimistic estimate of the next round
        if on_progress and now - last_report >= 1.0:
            last_report = now
            rounds = min(len(next(iter(timed[group].values())).rounds) for group in open_groups)
            on_progress(f"timing {shown}: round {rounds}, {now - started:.1f} s of {budget_s:g} s")
        for group in list(open_groups):
            arms = timed[group]
            rounds = len(next(iter(arms.values())).rounds)
            if max_calls and any(len(arm.samples) + arm.block > max_calls for arm in arms.values()):
                stopped[group] = "max_calls"
            elif _resolved(arms, reference, precision, confidence, until, min_rounds):
                stopped[group] = "resolved"
            else:
                continue
            open_groups.remove(group)
            ended[group] = now - started
        if now - started + round_s > budget_s:
            break
    seconds = time.perf_counter() - started
    others = watch.others()
    found = {group: Measurement(arms, reference, ended.get(group, seconds), stopped[group], others, confidence)
             for group, arms in timed.items()}
    if on_progress:
        rounds = "/".join(str(m.rounds) for m in found.values())
        how = "/".join(dict.fromkeys(m.stopped for m in found.values()))
        on_progress(f"timing {shown}: {rounds} rounds in {seconds:.1f} s ({how})")
    return found


def _shown(groups: dict[str, dict]) -> str:
    names = list(dict.fromkeys(name for arms in groups.values() for name in arms))
    shown = ", ".join(names) if len(names) <= 3 else f"{len(names)} models"
    return shown if len(groups) == 1 else f"{shown} at {len(groups)} shapes"


def measure(run: Callable[[], object], budget_s: float, **options) -> Measurement:
    """One arm alone, timed until its median is known to `precision` or the budget is spent."""
    return compare({"model": run}, None, budget_s, **options)


def _call(run: Callable[[], object], pause_s: float = 0.0, self_timed: bool = False) -> float:
    start = time.perf_counter()
    counted = run()
    seconds = float(counted) if self_timed else time.perf_counter() - start
    if pause_s:
        time.sleep(pause_s)
    return seconds


def _resolved(arms: dict[str, Arm], reference: str | None, precision: float, confidence: float,
              until: str = "decided", min_rounds: int = MIN_ROUNDS) -> bool:
    rounds = min(len(arm.rounds) for arm in arms.values())
    if rounds < (min(REFUSE_ROUNDS, min_rounds) if until == "faster" else min_rounds):
        return False
    if len(arms) == 1 or (reference is None and until != "ranked"):
        return all(_median_known(arm, precision, confidence) for arm in arms.values())
    if until == "ranked":  # each arm against its neighbour in the order of their medians
        ordered = sorted(arms.values(), key=lambda arm: float(np.median(arm.samples)))
        pairs = [(faster.matrix(), slower.matrix()) for faster, slower in zip(ordered, ordered[1:])]
    else:
        pairs = [(arm.matrix(), arms[reference].matrix()) for name, arm in arms.items() if name != reference]
    intervals = [ratio_interval(a, b, confidence, CHECK_RESAMPLES) for a, b in pairs]
    if until == "faster":  # an arm at most `precision` faster is not worth choosing: no need to pin it down
        return all((high < 1 and rounds >= min_rounds and rounds_agree(a, b)) or low >= 1 - precision
                   for (a, b), (_, low, high) in zip(pairs, intervals))
    return all((high < 1 and rounds_agree(a, b)) or (low > 1 and rounds_agree(b, a))
               or (high / ratio - 1 <= precision and 1 - low / ratio <= precision)
               for (a, b), (ratio, low, high) in zip(pairs, intervals))


def rounds_agree(faster: np.ndarray, slower: np.ndarray) -> bool:
    """Do the rounds themselves say `faster` is faster? A sign test over the rounds' medians: the
    bootstrap interval of a few rounds is narrower than it should be, and a change of the machine's
    speed that falls in the middle of one round can make that round alone decide it. Five rounds of
    five on one side (p = 1/32) is enough; a round against it asks for more."""
    difference = np.median(faster, axis=1) - np.median(slower, axis=1)
    wins, told = int((difference < 0).sum()), int((difference != 0).sum())
    return told > 0 and sum(math.comb(told, k) for k in range(wins, told + 1)) / 2 ** told <= SIGN_TEST_P


def _median_known(arm: Arm, precision: float, confidence: float) -> bool:
    median, low, high = bootstrap(arm.matrix(), percentile_stat(50), confidence, CHECK_RESAMPLES)
    return median > 0 and max(high - median, median - low) / median <= precision


PROGRESS = "progress: "  # a job log line that starts with this (after any "name: " prefixes) is progress


def progress_line(text: str) -> str:
    """A log line the engine shows as a step's progress instead of a log line."""
    return PROGRESS + text


def progress_text(line: str) -> str | None:
    """The progress in a job's log line (runners prefix lines with the pass name), or None."""
    at = line.find(PROGRESS)
    return line[at + len(PROGRESS):] if at >= 0 else None


def weighted(values: list[float], weights: list[float]) -> float:
    """The weighted mean: a workload's expected figure per request."""
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights)) / total if total else math.nan
