"""Issue 14's session-tuning figure: OrtSessionParamsTuning run 5 times while two busy background
processes load this machine, then every setting it could choose measured on the quiet machine,
all interleaved against ONNX Runtime's default in one process.

Targets: the setting each loaded run chose is within 5% of the best setting measured quietly, and
never slower than the default. The best is what the quiet comparison can show: the fastest setting
faster than the default beyond its interval with rounds that agree, else the default.

The model is bert_ptq's fused dynamic INT8 all-MiniLM-L6-v2 (made once through the engine into a
temporary cache); tuning times bert_ptq's workload (1x128, 8x128, 1x384).

    python benchmarks/tuning_under_load.py [--runs 5] [--quiet-budget-s 90] [--busy 2] [--budget-s S]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, busy

sys.path.insert(0, str(REPO))


def int8_model(root: Path):
    """bert_ptq's conversion -> fusion -> dynamic INT8, without tuning or evaluation."""
    import olive_systems
    from olive_systems.models import ModelRef, folder_sha256
    from olive_systems.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "bert_ptq.yaml")
    raw = {"input_model": recipe["input_model"], "data_configs": list(recipe["data_configs"].values()),
           "passes": {name: recipe["passes"][name] for name in ("conversion", "fusion", "dynamic_int8")},
           "pass_flows": [["conversion", "fusion", "dynamic_int8"]],
           "engine": {"cache_dir": str(root / "cache"), "output_dir": str(root / "out"), "evaluate_input_model": False}}
    output = olive_systems.run(raw)
    folder = Path(output.get_output_models()[0].model_path).parent
    return ModelRef(type="OnnxModel", path=str(folder), hash=folder_sha256(folder)), recipe


def tune(model, recipe: dict, out_dir: Path, budget_s: float | None) -> dict:
    """One OrtSessionParamsTuning run, in this process, as the engine would run it."""
    from olive_systems.passes.base import Accelerator, PassContext
    from olive_systems.passes.session_tuning import OrtSessionParamsTuning

    config = OrtSessionParamsTuning.resolve_config(recipe["passes"]["tuning"].get("config"))
    if budget_s:
        config["budget_s"] = budget_s
    ctx = PassContext(Accelerator("cpu", "CPUExecutionProvider"), lambda name, m: None, lambda message: None)
    tuned = OrtSessionParamsTuning().run(model, config, out_dir, ctx)
    return {"settings": tuned.inference_settings, "decision": tuned.attributes["tuning_decision"],
            "records": tuned.attributes["tuning"]}


def quiet_comparison(model, recipe: dict, settings_list: list[dict], budget_s: float) -> tuple[dict, str]:
    """Weighted ratio to the default (and its interval) of each setting, all interleaved, quiet; and
    the best setting: the fastest of those faster than the default beyond the interval with rounds
    that agree, else the default (a point estimate inside the default's interval is noise, not a
    better setting)."""
    from olive_systems.passes.session_tuning import _shapes
    from olive_systems.passes.session_tuning_options import make_runner
    from olive_systems.passes.tuning_choice import DEFAULT, choose, default_settings
    from olive_systems.ort import create_session

    arms = {}
    for settings in [default_settings("CPUExecutionProvider"), *settings_list]:
        name = DEFAULT if not settings["session_options"] else json.dumps(settings["session_options"], sort_keys=True)
        session = create_session(model.onnx_path, settings, "CPUExecutionProvider")
        arms[name] = (settings, lambda feed, s=session, st=settings: make_runner(s, feed, st, model.onnx_path))
    config = {"workload": recipe["workload"], "budget_s": budget_s, "warmup_num": 5, "precision": 0.01,
              "busy_cores": 99, "test_num": None, "predict_with_kv_cache": False, "dummy_sequence_length": 128}
    shapes = _shapes(config, None, create_session(model.onnx_path, None, "CPUExecutionProvider"))
    choice = choose(arms, shapes, config, lambda message: None)
    best = next((record["setting"] for record in choice.records if record["chosen"]), DEFAULT)
    return {record["setting"]: record for record in choice.records}, best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--busy", type=int, default=2, help="busy background processes during tuning")
    parser.add_argument("--quiet-budget-s", type=float, default=90.0)
    parser.add_argument("--budget-s", type=float, help="each loaded run's tuning budget (default: bert_ptq's)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tuning-bench-"))
    try:
        model, recipe = int8_model(root)
        chosen = []
        for run in range(args.runs):
            with busy(args.busy):
                started = time.perf_counter()
                result = tune(model, recipe, root / f"tuned-{run}", args.budget_s)
                seconds = time.perf_counter() - started
            print(f"loaded run {run + 1}: {seconds:.1f} s, {result['records'][0]['rounds']} rounds; "
                  f"chose {result['settings']['session_options'] or 'the default'}; {result['decision']['reason']}; "
                  f"others used {result['decision']['others_cpu']:.2f} cores", flush=True)
            chosen.append(result["settings"])
        from olive_systems.passes.session_tuning import OrtSessionParamsTuning
        from olive_systems.passes.session_tuning_options import candidate_settings

        config = OrtSessionParamsTuning.resolve_config(recipe["passes"]["tuning"].get("config"))
        grid = candidate_settings(config, ["CPUExecutionProvider"])
        time.sleep(2)
        quiet, best_name = quiet_comparison(model, recipe, grid, args.quiet_budget_s)
        print("quiet machine, every setting interleaved against the default (weighted over the workload):")
        for name, record in quiet.items():
            print(f"   {name:<90} x{record['ratio']:.3f} [{record['ratio_interval'][0]:.3f}, "
                  f"{record['ratio_interval'][1]:.3f}] {record.get('verdict', '')}")
        print(f"best quietly: {best_name}")
        best = quiet[best_name]["ratio"]
        worst_gap, slower = 0.0, 0
        for run, settings in enumerate(chosen):
            name = "default" if not settings["session_options"] else json.dumps(settings["session_options"], sort_keys=True)
            ratio = quiet[name]["ratio"]
            gap = ratio / best - 1
            worst_gap = max(worst_gap, gap)
            slower += quiet[name]["ratio_interval"][0] > 1  # slower than the default beyond the interval
            print(f"run {run + 1}: chose {name}: x{ratio:.3f} of the default quietly, {gap:+.1%} from the best ({best_name})")
        print(f"{'PASS' if worst_gap <= 0.05 else 'MISS'}  chosen within 5% of the best quiet setting: worst {worst_gap:+.1%}")
        print(f"{'PASS' if not slower else 'MISS'}  never slower than the default: {slower} of {len(chosen)} runs slower")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
