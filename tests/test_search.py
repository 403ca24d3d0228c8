"""Search over pass settings: the algorithms, the stop rules, pass-by-pass order, and real searches run
side by side with measurements that never overlap other work."""

from __future__ import annotations

import sys

import pytest
import yaml
from conftest import tiny_recipe

import olive_systems
from olive_systems.errors import RecipeError
from olive_systems.ranking import sort_key
from olive_systems.recipe import load_recipe
from olive_systems.search import Search

PASSES = {
    "quant": {"type": "OnnxStaticQuantization",
              "config": {"per_channel": {"choices": [True, False]}, "max_calibration_samples": {"range": [8, 32], "step": 8}}},
    "tune": {"type": "OrtSessionParamsTuning", "config": {"test_num": {"choices": [3, 5, 7]}}},
}


def scored(value: float, meets: bool = True) -> dict:
    """A candidate as the engine hands it to a search: lower latency is better."""
    metrics = {"latency-p50": {"value": value, "priority": 1, "higher_is_better": False}}
    return {"metrics": metrics, "missed_goals": [] if meets else ["missed"], "meets_goals": meets}


def search(strategy: dict, flow=("quant", "tune"), has_goals=False, timed_goals=False) -> Search:
    return Search(list(flow), PASSES, strategy, lambda c: sort_key(c["metrics"], c["missed_goals"]), has_goals,
                  timed_goals)


def drain(s: Search, score=lambda trial: 1.0) -> list:
    """Run a search to its end, one trial at a time, each scored by `score`."""
    trials = []
    while (trial := s.ask()) is not None:
        trials.append(trial)
        s.tell(trial, scored(score(trial)))
    assert s.done
    return trials


def test_exhaustive_visits_the_whole_grid_in_order():
    trials = drain(search({"search_algorithm": "exhaustive"}))
    assert len(trials) == 2 * 4 * 3
    assert trials[0].point == {"quant": {"per_channel": True, "max_calibration_samples": 8}, "tune": {"test_num": 3}}
    assert trials[1].point["tune"] == {"test_num": 5}
    assert len({str(t.point) for t in trials}) == len(trials)
    assert all(t.upto == 2 for t in trials)


def test_random_draws_distinct_points_and_the_seed_repeats_them():
    strategy = {"search_algorithm": "random", "search_algorithm_config": {"num_samples": 6, "seed": 3}}
    first, again = drain(search(strategy)), drain(search(strategy))
    assert len(first) == 6 and len({str(t.point) for t in first}) == 6
    assert [t.point for t in first] == [t.point for t in again]
    other = drain(search({**strategy, "search_algorithm_config": {"num_samples": 6, "seed": 4}}))
    assert [t.point for t in other] != [t.point for t in first]


def test_tpe_learns_where_the_good_settings_are():
    # Latency is lowest with per_channel false and many calibration samples: after its start-up
    # trials TPE should mostly sample there, far more often than the 1 in 8 a blind draw would.
    def latency(trial):
        quant = trial.point["quant"]
        return (0 if not quant["per_channel"] else 5) + (32 - quant["max_calibration_samples"]) / 8

    strategy = {"search_algorithm": "tpe", "search_algorithm_config": {"num_samples": 24, "seed": 0}}
    trials = drain(search(strategy, flow=("quant",)), latency)
    assert len(trials) == 24
    late = [latency(t) for t in trials[12:]]
    assert sum(value == 0 for value in late) >= 4, late


def test_pass_by_pass_fixes_each_stage_best_before_the_next():
    s = search({"execution_order": "pass-by-pass"})
    first_stage = []
    while (trial := s.ask()) is not None:  # stage 1: quant alone, the flow cut before tune
        first_stage.append(trial)
    assert len(first_stage) == 8 and all(t.upto == 1 and "tune" not in t.point for t in first_stage)
    best = first_stage[5]
    for trial in first_stage:
        s.tell(trial, scored(1.0 if trial is best else 2.0))
    second_stage = drain(s)
    assert len(second_stage) == 3 and all(t.upto == 2 for t in second_stage)
    assert all(t.point["quant"] == best.point["quant"] for t in second_stage)


def test_stop_rules():
    assert len(drain(search({"max_iter": 5}))) == 5
    goals = search({"stop_when_goals_met": True}, has_goals=True)
    trials = []
    while (trial := goals.ask()) is not None:
        trials.append(trial)
        goals.tell(trial, scored(1.0, meets=len(trials) == 3))
    assert len(trials) == 3
    # each candidate's own timing is needed at once only when a goal is on a timing figure
    assert not goals.learns and search({"stop_when_goals_met": True}, has_goals=True, timed_goals=True).learns
    timed = search({"max_time": 0.05})
    timed.started -= 1.0  # as if a second had gone by
    assert timed.ask() is None and timed.done


def test_a_failed_trial_is_recorded_and_the_search_goes_on():
    s = search({"search_algorithm": "tpe", "search_algorithm_config": {"num_samples": 5}}, flow=("quant",))
    trials = []
    while (trial := s.ask()) is not None:
        trials.append(trial)
        s.tell(trial, None if len(trials) % 2 else scored(1.0))
    assert len(trials) == 5


def write(tmp_path, recipe):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("space, message", [
    ({"choices": ["QInt8", "int9"]}, "passes.dynamic.config.weight_type.choices[1]: 'int9' is not one of ['QInt8', 'QUInt8']"),
    ({"choices": []}, "passes.dynamic.config.weight_type.choices: [] should be non-empty"),
])
def test_a_bad_search_space_names_the_path(tiny_bert, tmp_path, space, message):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["dynamic"]["config"]["weight_type"] = space
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, recipe))
    assert message in info.value.message


def test_a_range_of_reals_without_a_step_is_refused(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["tuning"]["config"]["dummy_sequence_length"] = {"range": [8, 32]}  # integers: fine
    load_recipe(write(tmp_path, recipe))
    recipe["passes"]["tuning"]["config"]["dummy_sequence_length"] = {"range": [8.5, 32]}
    with pytest.raises(RecipeError, match="dummy_sequence_length: a range of real numbers needs a step"):
        load_recipe(write(tmp_path, recipe))


def search_recipe(tiny_bert, tmp_path, **engine) -> dict:
    """Dynamic INT8 over per_channel x weight_type, plus an export at an opset too old for attention,
    run in a venv system (the interpreter of this test) so jobs can run side by side."""
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["conversion"]["config"]["target_opset"] = {"choices": [17, 9]}
    recipe["passes"]["dynamic"]["config"] = {"per_channel": {"choices": [True, False]},
                                             "weight_type": {"choices": ["QInt8", "QUInt8"]}}
    recipe["pass_flows"] = [["conversion", "dynamic"]]
    recipe["systems"] = {"host": {"type": "LocalSystem"}, "workers": {"type": "VenvSystem", "python": sys.executable}}
    recipe["engine"].update(host="host", target="workers", **engine)
    return recipe


def test_search_runs_side_by_side_and_measurements_have_the_machine_alone(tiny_bert, tmp_path):
    output = olive_systems.run(search_recipe(tiny_bert, tmp_path, max_concurrency=2))
    models = output.get_output_models()
    points = [m._data["search_point"] for m in models]
    assert len(models) == 4 and all(p["conversion.target_opset"] == 17 for p in points)
    assert {(p["dynamic.per_channel"], p["dynamic.weight_type"]) for p in points} == {
        (True, "QInt8"), (True, "QUInt8"), (False, "QInt8"), (False, "QUInt8")}
    for model in models:  # each candidate was really made with its own settings
        dynamic = next(step for step in model.run_history if step["pass"] == "dynamic")
        assert dynamic["config"]["per_channel"] == model._data["search_point"]["dynamic.per_channel"]
    # the opset-9 export fails (attention needs opset 14) for all four of its points; each is recorded, the search went on
    assert len(output.failures) == 4 and all("onnx.export failed" in f["error"] for f in output.failures)
    assert any(m.pareto for m in models)

    # Every timing loop had the machine alone: no other work (a job, or the engine hashing and
    # tokenizing for one) held it at the same time. Other work did run side by side.
    use = output.machine_use
    overlapping = lambda a, b: a["start_s"] < b["end_s"] and b["start_s"] < a["end_s"]  # noqa: E731
    alone = [u for u in use if u["mode"] == "alone"]
    assert [u["label"] for u in alone] == ["input model", "timing 4 models"]  # the candidates timed side by side
    for timed in alone:
        assert not [u["label"] for u in use if u is not timed and overlapping(timed, u)], timed
    shared = [u for u in use if u["mode"] == "shared" and "(job)" not in u["label"]]
    assert any(overlapping(a, b) for i, a in enumerate(shared) for b in shared[i + 1:]), "nothing ran side by side"
    assert len([j for j in output.jobs if j["label"] == "conversion"]) == 2  # one export per opset, shared by the trials


def test_side_by_side_gives_the_sequential_results(tiny_bert, tmp_path):
    one = olive_systems.run(search_recipe(tiny_bert, tmp_path / "one", max_concurrency=1))
    two = olive_systems.run(search_recipe(tiny_bert, tmp_path / "two", max_concurrency=2))
    quality = lambda output: {m.model_id: (m.metrics_value["accuracy-accuracy_score"],  # noqa: E731
                                           round(m.metrics_value["fidelity-cosine_mean"], 6)) for m in output.get_output_models()}
    assert quality(one) == quality(two)
    assert [f["model_id"] for f in one.failures] == [f["model_id"] for f in two.failures]
