"""What a user reads on the console and in the run's records: no doubled prefixes, metric lines that stay
whole in a CI log, and steps reused from this run or the cache shown as such (not as 0.0 s computed)."""

from __future__ import annotations

import json

import yaml

from olive_systems.cli import main

from conftest import tiny_recipe


def test_console_lines_and_step_records(tiny_bert, tmp_path, capsys):
    recipe = tiny_recipe(tiny_bert, tmp_path, pass_flows=[["conversion"], ["conversion", "fusion", "dynamic"]])
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))

    assert main(["run", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "fusion: fused:" in err and "fusion: fusion:" not in err
    evaluations = [line for line in err.splitlines() if line.startswith("✓ evaluation")]
    assert evaluations and all("accuracy" in line and "fidelity" in line for line in evaluations)  # one line each
    assert max(map(len, evaluations)) > 80  # long enough that an 80-column wrap would have split it

    data = json.loads((tmp_path / "out" / "workflow_output.json").read_text())
    fused = next(m for m in data["models"] if len(m["run_history"]) == 3)
    conversion = fused["run_history"][0]
    if conversion["cached"]:  # the other candidate made it first: reused, not "computed in 0.0 s"
        assert conversion["source"] == "this run"
    plain = next(m for m in data["models"] if len(m["run_history"]) == 1)["run_history"][0]
    assert [plain["cached"], conversion["cached"]].count(False) == 1  # computed once, by one of them
    ranked = json.loads((tmp_path / "out" / "models_rank.json").read_text())
    assert all("search_point" in entry for entry in ranked)

    assert main(["run", "--config", str(config)]) == 0
    shown = capsys.readouterr()
    assert "from cache" in shown.err and " 0 computed" in shown.out
    data = json.loads((tmp_path / "out" / "workflow_output.json").read_text())
    assert all(step["cached"] for m in data["models"] for step in m["run_history"])


def test_a_long_step_shows_signs_of_life_without_a_terminal(monkeypatch):
    """Piped to a file (CI), there is no live status line: a step still running says so every HEARTBEAT_S,
    with the progress it reported, and stops once it ends."""
    import io
    import time

    from rich.console import Console

    from olive_systems import progress as progress_mod

    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.05)
    shown = io.StringIO()
    progress = progress_mod.Progress()
    progress.console = Console(file=shown, soft_wrap=True)
    with progress:
        progress.on_event({"kind": "start", "name": "input model", "step": "timing"})
        progress.on_event({"kind": "progress", "name": "input model", "message": "40/100 runs"})
        time.sleep(0.3)
        progress.on_event({"kind": "ended", "name": "input model"})
        quiet_from = len(shown.getvalue())
        time.sleep(0.2)
    beats = [line for line in shown.getvalue().splitlines() if line.startswith("…")]
    assert beats and all("timing: input model" in line and "(40/100 runs)" in line for line in beats)
    assert "…" not in shown.getvalue()[quiet_from:]
