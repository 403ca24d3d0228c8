"""Prints every figure the foundation promises, next to its target. Run with `make bench`.

1. bert_ptq: best INT8 candidate latency / FP32 export latency, its fidelity and accuracy drop
2. bench_parity cold run (empty cache) / the hand-written script's wall time
3. warm re-run of bert_ptq (everything cached), wall seconds
4. `olive-systems --help`, wall seconds
5. three bert_ptq runs at once on one cold cache: steps computed / needed, wall / one run (concurrent_runs.py)
6. `olive-systems validate` of every recipe, seconds each (validate_speed.py)
7. cold bert_ptq run / Microsoft Olive 0.13's cold run of its own latency-only BERT config (olive_cold_run.py)
8. per workload shape: the first-ranked candidate / FP32 export, its fidelity, and the gap to an exhaustive
   sweep's best (workload.py)
9. session tuning under load: the chosen setting measured quietly against the best and the default
   (tuning_under_load.py)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BIN, ENV, REPO


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def line(name: str, value: str, target: str, ok: bool) -> None:
    print(f"{'PASS' if ok else 'MISS'}  {name:<48} {value:<28} target {target}")


def bert_ptq(cache: Path, out: Path) -> None:
    cold = wall([str(BIN / "olive-systems"), "run", "--config", "recipes/bert_ptq.yaml",
                 "--cache-dir", str(cache), "--output-dir", str(out)])
    data = json.loads((out / "workflow_output.json").read_text())
    models = {m["model_id"]: m["metrics"] for m in data["models"]}
    base = data["input_model_metrics"]
    fp32 = models["conversion"]["latency-p50"]["value"]
    int8 = {k: v for k, v in models.items() if k != "conversion"}
    best_id = min(int8, key=lambda k: int8[k]["latency-p50"]["value"])
    best = int8[best_id]
    ratio = best["latency-p50"]["value"] / fp32
    fidelity = best["fidelity-cosine_mean"]["value"]
    drop = (base["accuracy-accuracy_score"]["value"] - best["accuracy-accuracy_score"]["value"]) * 100
    print(f"bert_ptq cold run {cold:.1f} s; FP32 export p50 {fp32:.2f} ms; fastest INT8 = {best_id}")
    for model_id, metrics in models.items():
        print(f"      {model_id:<42} p50 {metrics['latency-p50']['value']:7.2f} ms  x{metrics['latency-p50']['value'] / fp32:.3f}"
              f"  fidelity {metrics['fidelity-cosine_mean']['value']:.4f}  accuracy {metrics['accuracy-accuracy_score']['value']:.4f}")
    line("INT8 latency / FP32 export latency", f"{ratio:.3f}", "<= 0.50", ratio <= 0.50)
    line("its embedding fidelity (mean cosine)", f"{fidelity:.4f}", ">= 0.99", fidelity >= 0.99)
    line("its accuracy drop vs FP32 (points)", f"{drop:.2f}", "<= 1.0", drop <= 1.0)
    warm = [wall([str(BIN / "olive-systems"), "run", "--config", "recipes/bert_ptq.yaml", "--cache-dir", str(cache),
                  "--output-dir", str(out)]) for _ in range(3)]
    line("bert_ptq warm re-run (median of 3)", f"{statistics.median(warm):.2f} s", "<= 2 s", statistics.median(warm) <= 2)


def parity(cache: Path, out: Path) -> None:
    hand = wall([sys.executable, "benchmarks/handwritten_parity.py"])
    ours = wall([str(BIN / "olive-systems"), "run", "--config", "recipes/bench_parity.yaml",
                 "--cache-dir", str(cache), "--output-dir", str(out), "--clean-cache"])
    print(f"bench_parity: hand-written {hand:.1f} s, olive-systems cold {ours:.1f} s")
    line("bench_parity cold / hand-written", f"{ours / hand:.2f}", "<= 1.3", ours / hand <= 1.3)


def help_time() -> None:
    times = [wall([str(BIN / "olive-systems"), "--help"]) for _ in range(5)]
    line("olive-systems --help (median of 5)", f"{statistics.median(times):.3f} s", "<= 0.3 s", statistics.median(times) <= 0.3)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scripts = {"concurrent": "concurrent_runs.py", "validate": "validate_speed.py", "olive": "olive_cold_run.py",
                   "workload": "workload.py", "tuning": "tuning_under_load.py"}
        wanted = sys.argv[1:] or ["bert_ptq", "parity", "help", *scripts]
        if "bert_ptq" in wanted:
            bert_ptq(tmp / "cache", tmp / "bert_ptq")
        if "parity" in wanted:
            parity(tmp / "parity_cache", tmp / "parity")
        if "help" in wanted:
            help_time()
        for name, script in scripts.items():
            if name in wanted:
                subprocess.run([sys.executable, f"benchmarks/{script}"], cwd=REPO, env=ENV, check=True)
