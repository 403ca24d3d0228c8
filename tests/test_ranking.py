"""Ranking: priority 1 decides, ties go to priority 2; candidates that miss a goal are marked and rank last."""

from olive_systems.evaluation.metrics import meets_goal
from olive_systems.ranking import goals_of, rank

METRICS = [
    {"name": "latency", "type": "latency", "sub_types": [{"name": "p50", "priority": 1}]},
    {"name": "accuracy", "type": "accuracy",
     "sub_types": [{"name": "accuracy_score", "priority": 2, "goal": {"type": "max-degradation", "value": 0.01}}]},
]


def candidate(model_id, latency, accuracy):
    return {"model_id": model_id, "metrics": {
        "latency-p50": {"value": latency, "priority": 1, "higher_is_better": False},
        "accuracy-accuracy_score": {"value": accuracy, "priority": 2, "higher_is_better": True}}}


BASELINE = {"accuracy-accuracy_score": {"value": 0.90}}


def test_lower_latency_ranks_first_and_ties_fall_to_accuracy():
    ranked = rank([candidate("slow", 20, 0.90), candidate("fast_low", 10, 0.895), candidate("fast_high", 10, 0.90)],
                  goals_of(METRICS), BASELINE)
    assert [c["model_id"] for c in ranked] == ["fast_high", "fast_low", "slow"]
    assert [c["rank"] for c in ranked] == [1, 2, 3]


def test_missing_a_goal_marks_the_candidate_and_ranks_it_after_those_that_meet_theirs():
    ranked = rank([candidate("fastest_but_inaccurate", 5, 0.85), candidate("ok", 15, 0.90)], goals_of(METRICS), BASELINE)
    assert [c["model_id"] for c in ranked] == ["ok", "fastest_but_inaccurate"]
    assert ranked[1]["meets_goals"] is False and "accuracy-accuracy_score" in ranked[1]["missed_goals"][0]
    assert ranked[0]["meets_goals"] is True


def test_goal_types():
    assert meets_goal({"type": "threshold", "value": 0.99}, 0.995, None, True)
    assert not meets_goal({"type": "threshold", "value": 0.99}, 0.98, None, True)
    assert meets_goal({"type": "threshold", "value": 10}, 9, None, False)
    assert meets_goal({"type": "max-degradation", "value": 0.01}, 0.895, 0.90, True)
    assert not meets_goal({"type": "max-degradation", "value": 0.01}, 0.88, 0.90, True)
    assert meets_goal({"type": "min-improvement", "value": 5}, 14, 20, False)  # latency fell by 6 ms
    assert not meets_goal({"type": "min-improvement", "value": 5}, 16, 20, False)
    assert meets_goal({"type": "percent-min-improvement", "value": 50}, 9, 20, False)
    assert not meets_goal({"type": "percent-min-improvement", "value": 50}, 11, 20, False)
    assert meets_goal({"type": "percent-max-degradation", "value": 1}, 0.895, 0.90, True)
    assert not meets_goal({"type": "percent-max-degradation", "value": 1}, 0.89, 0.90, True)


def test_pareto_front_keeps_every_trade_off_and_drops_dominated_candidates():
    ranked = rank([candidate("fast", 10, 0.85), candidate("accurate", 20, 0.92), candidate("balanced", 15, 0.90),
                   candidate("dominated", 16, 0.89), candidate("twin_of_fast", 10, 0.85)], goals_of(METRICS), BASELINE)
    front = {c["model_id"] for c in ranked if c["pareto"]}
    assert front == {"fast", "accurate", "balanced", "twin_of_fast"}  # equal points do not dominate each other
