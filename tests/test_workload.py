"""Issue 14: the workload in the recipe, measurements that survive noise (olive_systems.measure),
session tuning that keeps the default unless a setting wins beyond the interval, and the input
model's timing cached like every step.

The statistics and the choosing rules run on a fake clock (each call advances it by a known,
noisy amount), so they are checked exactly and without timing assertions; the engine tests run
real exports and sessions of a tiny BERT."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import olive_systems
from olive_systems import measure
from olive_systems.errors import RecipeError
from olive_systems.passes import tuning_choice
from olive_systems.recipe import load_recipe

from conftest import REPO, tiny_recipe

WORKLOAD = [{"batch_size": 1, "sequence_length": 16, "weight": 3}, {"batch_size": 4, "sequence_length": 16, "weight": 1},
            {"sequence_length": 32}]


# ---- the workload in the recipe ----

def test_bert_ptq_declares_the_three_shapes_and_hands_them_to_latency_and_tuning():
    recipe = load_recipe(REPO / "recipes" / "bert_ptq.yaml")
    shapes = [(s["batch_size"], s["sequence_length"]) for s in recipe["workload"]]
    assert shapes == [(1, 128), (8, 128), (1, 384)]
    latency = next(m for m in recipe["evaluators"]["common_evaluator"]["metrics"] if m["type"] == "latency")
    assert [(s["batch_size"], s["sequence_length"]) for s in latency["workload"]] == shapes
    assert all(s["weight"] > 0 for s in latency["workload"])
    assert recipe["passes"]["tuning"]["config"]["workload"] == latency["workload"]
    accuracy = next(m for m in recipe["evaluators"]["common_evaluator"]["metrics"] if m["type"] == "accuracy")
    assert "workload" not in accuracy  # only timing metrics are shaped


def test_a_workload_shape_gets_defaults_and_a_metric_may_declare_its_own(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path, workload=WORKLOAD)
    own = [{"batch_size": 2, "sequence_length": 8}]
    recipe["evaluators"]["common"]["metrics"].append(
        {"name": "throughput", "type": "throughput", "sub_types": [{"name": "avg"}], "workload": own})
    loaded = load_recipe(recipe)
    latency, *_, throughput = loaded["evaluators"]["common"]["metrics"]
    assert latency["workload"][2] == {"batch_size": 1, "weight": 1, "sequence_length": 32}
    assert throughput["workload"] == [{"batch_size": 2, "weight": 1, "sequence_length": 8}]


@pytest.mark.parametrize("shape, expected", [
    ({"batch_size": 1}, "workload[0]"),                                    # neither a sequence nor a prompt
    ({"sequence_length": 0}, "workload[0].sequence_length"),
    ({"sequence_length": 16, "weight": 0}, "workload[0].weight"),
    ({"sequence_length": 16, "batch": 4}, "unknown key 'batch'; did you mean 'batch_size'?"),
])
def test_a_bad_shape_is_one_clear_error(tiny_bert, tmp_path, shape, expected):
    with pytest.raises(RecipeError) as error:
        load_recipe(tiny_recipe(tiny_bert, tmp_path, workload=[shape]))
    assert expected in str(error.value)


def test_a_decoder_shape_given_to_a_latency_metric_is_refused_before_any_work(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path, workload=[{"prompt_tokens": 32, "new_tokens": 16}])
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert "workload[0]" in str(error.value) and "sequence_length" in str(error.value)


def _candidate(name, by_shape: dict, fidelity=0.995):
    """A candidate whose latency-p50 is the weighted figure of its shapes, as the evaluator writes it."""
    from olive_systems.evaluation.timing import _combine

    shapes = [({"batch_size": int(label.split("x")[0]), "weight": weight}, value) for label, (value, weight) in by_shape.items()]
    return {"model_id": name, "metrics": {
        "latency-p50": {"value": _combine("latency", shapes), "priority": 1, "higher_is_better": False,
                        "by_shape": {label: {"value": value, "weight": weight} for label, (value, weight) in by_shape.items()}},
        "fidelity-cosine_mean": {"value": fidelity, "priority": 2, "higher_is_better": True}}}


def test_ranking_follows_the_weighted_workload_and_each_shape_gets_its_own_winner():
    from olive_systems.ranking import rank, rank_shapes

    fused = _candidate("fused", {"1x128": (5.0, 0.75), "8x128": (40.0, 0.25)})     # 13.75 ms per request
    unfused = _candidate("unfused", {"1x128": (6.0, 0.75), "8x128": (33.0, 0.25)})  # 12.75 ms per request
    per_tensor = _candidate("per_tensor", {"1x128": (4.0, 0.75), "8x128": (30.0, 0.25)}, fidelity=0.96)
    goals = {"fidelity-cosine_mean": ({"type": "threshold", "value": 0.99}, True)}
    ranked = rank([fused, unfused, per_tensor], goals, None)
    assert [c["model_id"] for c in ranked] == ["unfused", "fused", "per_tensor"]  # a missed goal ranks last
    rank_shapes(ranked)
    at = lambda c, shape: c["metrics"]["latency-p50"]["by_shape"][shape]["rank"]  # noqa: E731
    assert (at(fused, "1x128"), at(unfused, "1x128"), at(per_tensor, "1x128")) == (1, 2, 3)
    assert (at(unfused, "8x128"), at(fused, "8x128")) == (1, 2)


def test_a_workloads_throughput_is_samples_over_the_time_they_take():
    from olive_systems.evaluation.timing import _combine

    # 3 requests of batch 1 at 100 samples/s (30 ms) and 1 of batch 8 at 200 samples/s (40 ms): 11 samples in 70 ms
    figures = [({"batch_size": 1, "weight": 3}, 100.0), ({"batch_size": 8, "weight": 1}, 200.0)]
    assert _combine("throughput", figures) == pytest.approx(11 / 0.070)
    assert _combine("latency", [({"batch_size": 1, "weight": 3}, 10.0), ({"batch_size": 8, "weight": 1}, 40.0)]) == 17.5


# ---- the statistics ----

def test_ratio_interval_resolves_a_real_difference_and_not_an_equal_pair():
    rng = np.random.default_rng(1)
    drift = np.linspace(1, 3, 40)[:, None]  # load that comes and goes: the same rounds of both arms slow down
    slow = drift * (2.0 + rng.normal(0, 0.1, (40, 5)))
    fast = drift * (1.0 + rng.normal(0, 0.05, (40, 5)))
    same = drift * (2.0 + rng.normal(0, 0.1, (40, 5)))
    ratio, low, high = measure.ratio_interval(fast, slow)
    assert low <= ratio <= high < 1 and low > 0.4  # about 0.5, resolved faster
    assert measure.rounds_agree(fast, slow) and not measure.rounds_agree(slow, fast)
    ratio, low, high = measure.ratio_interval(same, slow)
    assert low < 1 < high  # no difference beyond the interval
    assert not measure.rounds_agree(same, slow) and not measure.rounds_agree(slow, same)


def test_one_round_against_it_asks_for_more_rounds_before_one_side_wins():
    """Five rounds of five on one side decide; four of five do not (a change of the machine's speed
    in the middle of a round can flip that round); nine of ten do."""
    def rounds(wins, told):
        slower = np.full((told, 3), 2.0)
        faster = np.where(np.arange(told)[:, None] < wins, 1.0, 3.0) * np.ones((told, 3))
        return faster, slower
    assert measure.rounds_agree(*rounds(5, 5))
    assert not measure.rounds_agree(*rounds(4, 5))
    assert measure.rounds_agree(*rounds(9, 10))
    assert not measure.rounds_agree(*rounds(8, 10))


def test_the_bootstrap_resamples_whole_rounds():
    rounds = np.array([[1.0, 1.0], [3.0, 3.0]])  # two rounds: the median is 1, 2 or 3 over resamples
    estimate, low, high = measure.bootstrap(rounds, measure.percentile_stat(50), resamples=200)
    assert estimate == 2.0 and low == 1.0 and high == 3.0


class FakeClock:
    """perf_counter for olive_systems.measure: a call advances it by its arm's cost times noise."""

    def __init__(self, monkeypatch, seed=0):
        self.now, self.rng = 0.0, np.random.default_rng(seed)
        monkeypatch.setattr(measure.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(measure._CpuWatch, "others", lambda watch: self.others)
        self.others = 0.0

    def arm(self, cost_s, noise=0.05):
        def run():
            self.now += cost_s * float(self.rng.lognormal(0, noise))
        return run


def test_compare_stops_when_resolved_and_never_past_its_budget(monkeypatch):
    clock = FakeClock(monkeypatch)
    progress = []
    found = measure.compare({"ref": clock.arm(0.002), "fast": clock.arm(0.001)}, "ref", 10.0, on_progress=progress.append)
    assert found.stopped == "resolved" and found.seconds < 10
    ratio, low, high = found.ratio("fast")
    assert high < 1 and low <= ratio <= high
    assert progress and "rounds" in progress[-1]
    clock.now = 0.0
    noisy = measure.compare({"ref": clock.arm(0.002, 0.5), "same": clock.arm(0.002, 0.5)}, "ref", 3.0, precision=0.001)
    assert noisy.stopped == "budget" and noisy.seconds <= 3.0 + 0.1


def test_ranking_arms_goes_on_until_neighbours_are_told_apart(monkeypatch):
    """Two candidates 3% apart, both far faster than the reference: against the reference alone it is
    decided at once; ranked, it goes on until the two are told apart, and orders them right."""
    clock = FakeClock(monkeypatch)
    arms = lambda: {"ref": clock.arm(0.004, 0.3), "a": clock.arm(0.00200, 0.3), "b": clock.arm(0.00206, 0.3)}  # noqa: E731
    decided = measure.compare(arms(), "ref", 60.0, precision=0.005)
    clock.now = 0.0
    ranked = measure.compare(arms(), "ref", 60.0, precision=0.005, until="ranked")
    assert decided.stopped == ranked.stopped == "resolved"
    assert ranked.rounds > decided.rounds
    ratio, low, high = measure.ratio_interval(ranked.arms["a"].matrix(), ranked.arms["b"].matrix(),
                                              resamples=measure.CHECK_RESAMPLES)
    assert high < 1 and 0.9 < ratio < 1  # a is faster than b beyond the interval it stopped on
    with pytest.raises(ValueError, match="until"):
        measure.compare(arms(), "ref", 1.0, until="sorted")


def test_groups_share_the_rounds_so_a_passing_state_falls_on_every_shape(monkeypatch):
    """Two shapes of the same two models: the machine runs 30% faster for a stretch that is shorter
    than the whole timing. Timed one shape after the other, one shape would get nearly all of its rounds in
    it; cycled, every shape gets rounds both in and out of it. A shape whose order is plain stops
    being timed at the minimum rounds; the close one goes on with the budget."""
    clock = FakeClock(monkeypatch)
    fast_window = (1.0, 2.5)

    def arm(cost_s, noise=0.02):
        def run():
            factor = 0.7 if fast_window[0] <= clock.now < fast_window[1] else 1.0
            clock.now += cost_s * factor * float(clock.rng.lognormal(0, noise))
        return run
    when: dict[str, list[float]] = {"clear": [], "close": []}

    def stamped(group, run):
        def call():
            when[group].append(clock.now)
            run()
        return call
    groups = {"clear": {"ref": stamped("clear", arm(0.004)), "a": stamped("clear", arm(0.002))},
              "close": {"ref": stamped("close", arm(0.004, 0.1)), "a": stamped("close", arm(0.004, 0.1))}}
    progress = []
    found = measure.compare_groups(groups, "ref", 5.0, precision=0.001, on_progress=progress.append)
    assert found["clear"].stopped == "resolved" and found["close"].stopped == "budget"
    assert found["clear"].rounds == measure.MIN_ROUNDS < found["close"].rounds
    assert found["clear"].seconds < found["close"].seconds <= 5.0
    assert found["clear"].ratio("a")[2] < 1
    inside = [t for t in when["close"] if fast_window[0] <= t < fast_window[1]]
    assert 0.2 < len(inside) / len(when["close"]) < 0.8
    assert "at 2 shapes" in progress[-1] and "5/" in progress[-1]
    with pytest.raises(ValueError, match="reference 'ref'"):
        measure.compare_groups({"x": {"a": arm(0.001)}}, "ref", 1.0)


def test_calls_slower_than_the_budget_cost_one_warm_call_each(monkeypatch):
    clock = FakeClock(monkeypatch)
    # the first call of each (the warm-up) spends the budget: one more call each, never a cold first call as the figure
    found = measure.compare({"ref": clock.arm(3.0, 0), "other": clock.arm(2.0, 0)}, "ref", 4.0, warmup_num=10)
    assert found.stopped == "budget" and found.seconds == pytest.approx(10.0)
    assert [len(arm.samples) for arm in found.arms.values()] == [1, 1]
    clock.now = 0.0
    # the warm-up's second call (load came) ran past the budget: it is the figure, no call more
    costs = iter([0.1, 1.5, 0.1])

    def run():
        clock.now += next(costs)
    found = measure.compare({"model": run}, None, 1.0, warmup_num=10)
    assert found.seconds == pytest.approx(1.6) and found.arms["model"].samples == [1.5]


def test_a_lone_measurement_reports_its_median_with_an_interval(monkeypatch):
    clock = FakeClock(monkeypatch)
    found = measure.measure(clock.arm(0.004), 5.0, max_calls=100)
    median, low, high = found.interval("model")
    assert low <= median <= high and abs(median - 0.004) < 0.0004
    assert len(found.arms["model"].samples) <= 100
    summary = found.summary()
    assert summary["arms"]["model"]["interval_ms"][0] <= summary["arms"]["model"]["median_ms"]


# ---- session tuning: the default stays unless a setting wins beyond the interval ----

def _arms(clock, costs: dict):
    settings = {name: {"execution_provider": [["CPUExecutionProvider", {}]], "io_bind": False,
                       "session_options": {} if name == "default" else {"intra_op_num_threads": threads}}
                for name, (_, _, threads) in costs.items()}
    return {name: (settings[name], lambda feed, cost=cost, noise=noise: clock.arm(cost, noise))
            for name, (cost, noise, threads) in costs.items()}


CONFIG = {"budget_s": 4.0, "warmup_num": 2, "precision": 0.01, "busy_cores": 0.5, "test_num": None}
SHAPES = [{"batch_size": 1, "sequence_length": 16, "weight": 1, "feed": {}},
          {"batch_size": 8, "sequence_length": 16, "weight": 1, "feed": {}}]


def test_tuning_keeps_the_default_when_a_setting_is_not_faster_beyond_the_interval(monkeypatch):
    clock = FakeClock(monkeypatch)
    # the same cost under 30% noise: whatever the draws, its ratio is not below 1 beyond the interval
    choice = tuning_choice.choose(_arms(clock, {"default": (0.002, 0.3, None), "intra=1": (0.002, 0.3, 1)}),
                                  SHAPES, CONFIG, lambda message: None)
    assert choice.settings["session_options"] == {}
    assert "kept the default" in choice.reason
    record = next(r for r in choice.records if r["setting"] == "intra=1")
    assert record["ratio_interval"][1] >= 1 and not record["chosen"]


def test_tuning_takes_a_setting_that_wins_beyond_the_interval(monkeypatch):
    clock = FakeClock(monkeypatch)
    choice = tuning_choice.choose(_arms(clock, {"default": (0.002, 0.05, None), "intra=1": (0.0025, 0.05, 1),
                                                "intra=2": (0.0014, 0.05, 2)}), SHAPES, CONFIG, lambda message: None)
    assert choice.settings["session_options"] == {"intra_op_num_threads": 2}
    chosen = next(r for r in choice.records if r["chosen"])
    assert chosen["ratio_interval"][1] < 1 and set(chosen["by_shape"]) == {"1x16", "8x16"}


def test_tuning_on_a_busy_machine_does_not_choose_a_thread_count(monkeypatch):
    clock = FakeClock(monkeypatch)
    clock.others = 1.8  # two busy neighbours: one thread looks faster than it is on a quiet machine
    monkeypatch.setattr(tuning_choice, "default_threads", lambda: 2)
    choice = tuning_choice.choose(_arms(clock, {"default": (0.004, 0.05, None), "intra=1": (0.002, 0.05, 1)}),
                                  SHAPES, CONFIG, lambda message: None)
    assert choice.settings["session_options"] == {}
    assert "busy" in next(r for r in choice.records if r["setting"] == "intra=1")["verdict"]


def _shaped_arms(clock, costs: dict):
    """name -> (settings, feed -> run): costs[name] maps a shape's feed marker to its cost."""
    return {name: (settings, lambda feed, name=name: clock.arm(costs[name][feed["shape"]], 0.05))
            for name, (settings, _) in _arms(clock, {n: (0, 0, None if n == "default" else 2) for n in costs}).items()}


def _shapes(*weights):
    return [{**shape, "weight": weight, "feed": {"shape": shape["batch_size"]}} for shape, weight in zip(SHAPES, weights)]


def test_tuning_weighs_each_shape_by_its_share_of_requests(monkeypatch):
    """A setting twice as fast at batch 1 and twice as slow at batch 8 is worth taking only when batch-1
    requests dominate: each timed call is one pass over the workload, weighted."""
    clock = FakeClock(monkeypatch)
    costs = {"default": {1: 0.002, 8: 0.002}, "intra=2": {1: 0.001, 8: 0.004}}
    mostly_one = tuning_choice.choose(_shaped_arms(clock, costs), _shapes(3, 1), CONFIG, lambda message: None)
    mostly_eight = tuning_choice.choose(_shaped_arms(clock, costs), _shapes(1, 3), CONFIG, lambda message: None)
    taken = next(r for r in mostly_one.records if r["setting"] == "intra=2")
    assert taken["chosen"] and taken["ratio"] == pytest.approx(1.75 / 2, rel=0.05)  # (3 x 1 + 4) / 4 ms against 2
    assert taken["by_shape"]["1x16"]["median_ms"] < taken["by_shape"]["8x16"]["median_ms"]
    assert mostly_eight.settings["session_options"] == {} and "kept the default" in mostly_eight.reason


def test_tuning_does_not_choose_on_too_few_rounds(monkeypatch):
    """A setting 40% faster, but the budget allows only a few rounds: the 'interval' of fewer rounds
    than a sign test needs decides nothing, and the reason says so."""
    clock = FakeClock(monkeypatch)
    costs = {"default": {1: 0.05, 8: 1.0}, "intra=2": {1: 0.03, 8: 0.6}}
    choice = tuning_choice.choose(_shaped_arms(clock, costs), _shapes(1, 1), {**CONFIG, "budget_s": 6.0},
                                  lambda message: None)
    record = next(r for r in choice.records if r["setting"] == "intra=2")
    assert record["rounds"] < measure.MIN_ROUNDS and record["ratio"] < 0.7
    assert not record["chosen"] and "too few rounds" in record["verdict"]
    assert choice.settings["session_options"] == {} and "budget_s" in choice.reason


def test_tuning_refuses_a_slower_setting_on_fewer_rounds_than_it_takes_to_choose_one(monkeypatch):
    """Keeping the default is the safe side: a setting twice as slow is refused after REFUSE_ROUNDS
    rounds, and that is not reported as too few rounds; one 40% faster is still timed MIN_ROUNDS."""
    clock = FakeClock(monkeypatch)
    choice = tuning_choice.choose(_arms(clock, {"default": (0.01, 0.05, None), "intra=1": (0.02, 0.05, 1)}),
                                  SHAPES, {**CONFIG, "budget_s": 60.0, "precision": 0.05}, lambda message: None)
    record = next(r for r in choice.records if r["setting"] == "intra=1")
    assert record["rounds"] == measure.REFUSE_ROUNDS < measure.MIN_ROUNDS and record["stopped"] == "resolved"
    assert record["verdict"] == "not faster than the default beyond the interval"
    assert choice.reason == "kept the default: no setting was faster beyond the interval"
    clock.now = 0.0
    choice = tuning_choice.choose(_arms(clock, {"default": (0.01, 0.05, None), "intra=1": (0.006, 0.05, 1)}),
                                  SHAPES, {**CONFIG, "budget_s": 60.0, "precision": 0.05}, lambda message: None)
    record = next(r for r in choice.records if r["setting"] == "intra=1")
    assert record["rounds"] == measure.MIN_ROUNDS and record["chosen"]


def test_tuning_stops_timing_a_setting_once_it_cannot_win_by_more_than_the_precision(monkeypatch):
    """The same cost as the default: deciding whether it is faster at all would take the whole budget;
    knowing it cannot be more than 5% faster takes a few rounds."""
    clock = FakeClock(monkeypatch)
    choice = tuning_choice.choose(_arms(clock, {"default": (0.002, 0.05, None), "intra=1": (0.002, 0.05, 1)}),
                                  SHAPES, {**CONFIG, "budget_s": 20.0, "precision": 0.05}, lambda message: None)
    record = next(r for r in choice.records if r["setting"] == "intra=1")
    assert record["stopped"] == "resolved" and record["ratio_interval"][0] >= 0.95 and not record["chosen"]
    assert clock.now < 4.0  # of 20 s
    # an equal pair told apart "to the precision" under until="decided" needs far more rounds
    clock.now = 0.0
    decided = measure.compare({"ref": clock.arm(0.002, 0.05), "same": clock.arm(0.002, 0.05)}, "ref", 20.0,
                              precision=0.002)
    faster = measure.compare({"ref": clock.arm(0.002, 0.05), "same": clock.arm(0.002, 0.05)}, "ref", 20.0,
                             precision=0.002, until="faster")
    assert faster.rounds < decided.rounds


# ---- the engine: shapes, weighted figures, intervals, the input model's timing cached ----

@pytest.fixture(scope="module")
def workload_runs(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workload")
    recipe = tiny_recipe(tiny_bert, tmp, workload=copy.deepcopy(WORKLOAD))
    latency = recipe["evaluators"]["common"]["metrics"][0]
    latency["metric_config"] = {"warmup_num": 2, "budget_s": 1.5}
    recipe["passes"]["tuning"]["config"] = {"budget_s": 2.0, "intra_op_thread_num_list": [1]}
    recipe["pass_flows"] = [["conversion"], ["conversion", "tuning"]]
    events = []
    first = olive_systems.run(copy.deepcopy(recipe), on_event=events.append)
    second = olive_systems.run(copy.deepcopy(recipe))
    return tmp, first, second, events


def test_timing_metrics_carry_every_shape_the_weighted_figure_and_intervals(workload_runs):
    tmp, first, _, _ = workload_runs
    model = first.get_output_model_by_id("conversion")
    entry = model.metrics["latency-p50"]
    assert set(entry["by_shape"]) == {"1x16", "4x16", "1x32"}
    weights = {name: shape["weight"] for name, shape in entry["by_shape"].items()}
    expected = sum(shape["value"] * weights[name] for name, shape in entry["by_shape"].items()) / sum(weights.values())
    assert entry["value"] == pytest.approx(expected, rel=1e-3)
    assert entry["interval"][0] <= entry["value"] <= entry["interval"][1]
    for shape in entry["by_shape"].values():
        assert shape["interval"][0] <= shape["value"] <= shape["interval"][1] and shape["rounds"] >= 1
    written = json.loads((tmp / "out" / "conversion" / "metrics.json").read_text())
    assert written["metrics"]["latency-p50"]["by_shape"] == entry["by_shape"]
    assert "by_shape" in written["input_model_metrics"]["latency-p50"]  # the torch input model: the same method


def test_timing_shows_progress(workload_runs):
    _, _, _, events = workload_runs
    shown = [(e["name"], e["message"]) for e in events if e["kind"] == "progress"]
    # every shape in one loop of rounds, for the input model alone as for the candidates side by side
    assert any(name == "input model" and text.startswith("latency: timing model at 3 shapes") for name, text in shown)
    assert any(name == "timing 2 models" and text.startswith("latency: timing conversion, conversion-tuning at 3 shapes")
               for name, text in shown)
    assert any(name == "tuning" and text.startswith("workload: timing") for name, text in shown)
    assert not any("progress: " in e["message"] for e in events if e["kind"] == "log")


def test_the_candidates_are_timed_side_by_side_in_one_job_and_the_input_model_alone(workload_runs):
    _, first, _, _ = workload_runs
    assert [s["name"] for s in first.steps if s["step"] == "timing"] == ["input model", "timing 2 models"]
    assert [j["label"] for j in first.jobs if j["measures"] and j["kind"] != "pass"] == ["input model", "timing 2 models"]
    reference = first.get_output_model_by_id("conversion").metrics["latency-p50"]["by_shape"]  # the first flow's
    assert all(shape["timed_with"] == 2 and "median_ratio" not in shape for shape in reference.values())
    by_shape = first.get_output_model_by_id("conversion-tuning").metrics["latency-p50"]["by_shape"]
    for name, shape in by_shape.items():
        low, high = shape["median_ratio_interval"]
        assert shape["timed_with"] == 2 and low <= shape["median_ratio"] <= high
        # the same rounds of both: the ratio of their medians is the ratio of their figures
        assert shape["median_ratio"] == pytest.approx(shape["value"] / reference[name]["value"], rel=0.01)
        # the machine's speed over the rounds is the first candidate's, the same for every one timed with it
        assert shape["speed_spread"] == reference[name]["speed_spread"] >= 0
    assert "timed_with" not in first.input_model_metrics["latency-p50"]["by_shape"]["1x16"]


def test_the_timing_is_cached_on_a_rerun(workload_runs):
    _, first, second, _ = workload_runs
    timing = lambda output: [s for s in output.steps if s["step"] == "timing"]  # noqa: E731
    assert [s["cached"] for s in timing(first)] == [False, False]
    assert [s["cached"] for s in timing(second)] == [True, True]
    assert second.input_model_metrics["latency-p50"] == first.input_model_metrics["latency-p50"]
    assert second.get_output_model_by_id("conversion").metrics == first.get_output_model_by_id("conversion").metrics


def test_a_candidate_that_cannot_run_at_a_workload_shape_fails_alone(tiny_bert, tmp_path):
    """A model fixed to batch 1 cannot serve the workload's batch 4: that candidate fails, and the others
    are timed side by side without it."""
    recipe = tiny_recipe(tiny_bert, tmp_path, workload=copy.deepcopy(WORKLOAD))
    latency = recipe["evaluators"]["common"]["metrics"][0]
    latency["metric_config"] = {"warmup_num": 2, "budget_s": 0.5}
    recipe["evaluators"]["common"]["metrics"] = [latency]  # the others run batches of 16
    recipe["passes"]["fixed"] = {"type": "DynamicToFixedShape", "config": {"input_shapes": {
        name: [1, 16] for name in ("input_ids", "attention_mask", "token_type_ids")}}}
    recipe["pass_flows"] = [["conversion"], ["conversion", "dynamic"], ["conversion", "fixed"]]
    output = olive_systems.run(recipe)
    [failure] = output.failures
    assert failure["model_id"] == "conversion-fixed" and failure["step"] == "timing"
    assert "4x16" in failure["error"] and failure["fix"], failure
    assert sorted(m.model_id for m in output.get_output_models()) == ["conversion", "conversion-dynamic"]
    timed = output.get_output_model_by_id("conversion-dynamic").metrics["latency-p50"]["by_shape"]
    assert all(shape["timed_with"] == 2 for shape in timed.values())


def test_a_flow_that_fixes_a_dimension_the_workload_varies_is_refused_before_any_work(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path, workload=copy.deepcopy(WORKLOAD))
    recipe["passes"]["fixed"] = {"type": "DynamicToFixedShape", "config": {"dim_param": ["batch_size"], "dim_value": [1]}}
    recipe["pass_flows"] = [["conversion"], ["conversion", "fixed"]]
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert "pass_flows[1]: pass 'fixed' fixes batch_size to 1" in str(error.value) and "batch_size 4" in str(error.value)
    assert not (tmp_path / "cache").exists()


def test_a_search_that_learns_gets_each_candidates_timing_as_it_is_made(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["dynamic"]["config"] = {"per_channel": {"choices": [True, False]}}
    recipe["pass_flows"] = [["conversion", "dynamic"]]
    recipe["engine"]["search_strategy"] = {"search_algorithm": "tpe", "search_algorithm_config": {"num_samples": 2}}
    output = olive_systems.run(recipe)
    alone = [j["label"] for j in output.jobs if j["kind"] == "evaluation" and j["measures"]]
    assert sorted(alone) == ["conversion-dynamic_0", "conversion-dynamic_1", "input model"]  # for the sampler
    assert [j["label"] for j in output.jobs if j["kind"] == "timing"] == ["timing 2 models"]  # for the ranking
    for model in output.get_output_models():
        assert model.metrics["latency-p50"].get("interval")


def test_tuning_records_its_comparison_with_the_default(workload_runs):
    _, first, _, _ = workload_runs
    tuned = first.get_output_model_by_id("conversion-tuning")
    attributes = tuned.model_config["config"]["model_attributes"]
    records = {r["setting"]: r for r in attributes["tuning"]}
    assert "default" in records and len(records) == 2
    other = next(r for name, r in records.items() if name != "default")
    assert set(other["by_shape"]) == {"1x16", "4x16", "1x32"}
    chosen = [r for r in records.values() if r["chosen"]]
    options = tuned.get_inference_config()["session_options"]
    if chosen:  # chosen only beyond the interval
        assert chosen[0]["ratio_interval"][1] < 1 and options["intra_op_num_threads"] == 1
    else:
        assert options == {} and "kept the default" in attributes["tuning_decision"]["reason"]


def test_a_decoders_generation_is_timed_at_each_prompt_and_weighted():
    from olive_systems.evaluation.evaluator import _generation_by_shape

    metric = {"name": "gen", "type": "generation", "metric_config": {"repeat_test_num": 2},
              "workload": [{"prompt_tokens": 64, "new_tokens": 16, "weight": 3, "batch_size": 1},
                           {"prompt_tokens": 512, "new_tokens": 16, "weight": 1, "batch_size": 1}]}
    asked = []

    def values_for(shaped):
        asked.append(shaped["metric_config"])
        return {"ttft_ms": shaped["metric_config"]["prompt_tokens"] / 8}  # 8 or 64 ms

    details = {}
    values = _generation_by_shape(metric, details, values_for)
    assert asked == [{"repeat_test_num": 2, "prompt_tokens": 64, "new_tokens": 16},
                     {"repeat_test_num": 2, "prompt_tokens": 512, "new_tokens": 16}]
    assert values["ttft_ms"] == (3 * 8 + 64) / 4
    assert set(details["ttft_ms"]["by_shape"]) == {"p64+g16", "p512+g16"}
