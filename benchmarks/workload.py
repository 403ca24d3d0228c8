"""Issue 14's figures for the workload: recipes/bert_ptq_workload.yaml (the structure space, ranked
by the 1x128 / 8x128 / 1x384 workload) from an empty cache, then an exhaustive sweep of every
variant it made, all variants interleaved against the FP32 export at every shape in one loop of
rounds, each variant in a worker process of its own, as the engine times them (ratios within the same run, with
95% intervals).

Per shape it prints the FP32 export's p50 (and throughput), the candidate olive-systems ranks first
at that shape (latency-p50.by_shape[shape].rank == 1), its ratio to the FP32 export and fidelity,
and the best variant of the sweep (fidelity >= 0.99). Targets: first-ranked <= 0.50x at fidelity
>= 0.99, and within 3% of the sweep's best. Also: the cold run's wall time and the torch input
model's timing step (target <= 10 s).

    python benchmarks/workload.py [--sweep-budget-s 60] [--keep DIR] [--busy N]

--busy N runs the whole benchmark beside N busy background processes: the ranking against the sweep
and the torch input model's timing "whatever the load".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, busy, cpu_flags

sys.path.insert(0, str(REPO))
RECIPE = REPO / "recipes" / "bert_ptq_workload.yaml"
FIDELITY = "fidelity-cosine_mean"


def line(name: str, value: str, target: str, ok: bool) -> None:
    print(f"{'PASS' if ok else 'MISS'}  {name:<58} {value:<30} target {target}")


def feeds_for(folder: Path, shapes: list[dict]) -> dict:
    """Real tokens (a calibration sentence) repeated to each shape, as the evaluator feeds them."""
    import csv

    import numpy as np
    from transformers import AutoTokenizer

    from olive_systems.workload import shape_feed, shape_name

    with open(REPO / "recipes" / "data" / "calibration_sentences.csv") as f:
        text = next(csv.DictReader(f))["text"]
    encoded = AutoTokenizer.from_pretrained(folder)(text, return_tensors="np")
    base = {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()}
    return {shape_name(s): shape_feed(base, list(base), s, None) for s in shapes}


def sweep(models: list, shapes: list[dict], budget_s: float) -> dict:
    """shape -> Measurement of every model interleaved with the FP32 export ("conversion"), each model
    in a process of its own as it is served (the engine's way, evaluation/timing_worker.py)."""
    from olive_systems.evaluation.timing_worker import WorkerRunner
    from olive_systems.measure import compare_groups
    from olive_systems.models import ModelRef
    from olive_systems.workload import shape_name

    workers = {m.model_id: WorkerRunner(ModelRef(type="OnnxModel", path=str(Path(m.model_path).parent), hash="0" * 64,
                                                 inference_settings=m.get_inference_config()), "CPUExecutionProvider")
               for m in models}
    try:
        for worker in workers.values():
            worker.ready()
        feeds = feeds_for(Path(next(m for m in models if m.model_id == "conversion").model_path).parent, shapes)
        names = set(workers["conversion"].input_names)
        groups = {}
        for shape in shapes:
            feed = {k: v for k, v in feeds[shape_name(shape)].items() if k in names}
            groups[shape_name(shape)] = {model_id: worker.timed(feed) for model_id, worker in workers.items()}
        print(f"sweep: {len(workers)} variants interleaved at {len(shapes)} shapes, up to {budget_s * len(shapes):g} s",
              flush=True)
        # ranked: every neighbour told apart (or equal to 1%), not just each variant against the FP32 export
        return compare_groups(groups, "conversion", budget_s * len(shapes), warmup_num=5, precision=0.01, self_timed=True,
                              until="ranked")
    finally:
        for worker in workers.values():
            worker.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep-budget-s", type=float, default=60.0, help="seconds of interleaved timing per shape (all shapes in one loop)")
    parser.add_argument("--keep", type=Path, help="keep the output and cache here (a rerun is warm)")
    parser.add_argument("--busy", type=int, default=0, help="busy background processes during the whole run")
    args = parser.parse_args()
    import olive_systems
    import numpy as np

    from olive_systems.recipe import load_recipe
    from olive_systems.workload import shape_name

    print(f"CPU: {cpu_flags()}; load average at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    root = args.keep or Path(tempfile.mkdtemp(prefix="workload-bench-"))
    try:
        with busy(args.busy):
            if args.busy:
                print(f"{args.busy} busy background processes for the whole run", flush=True)
            started = time.perf_counter()
            output = olive_systems.run(str(RECIPE), output_dir=root / "out", cache_dir=root / "cache")
            wall = time.perf_counter() - started
            models = [m for m in output.get_output_models() if m.model_type == "onnxmodel"]
            shapes = load_recipe(RECIPE)["workload"]
            measured = sweep(models, shapes, args.sweep_budget_s)
        input_timing = [s for s in output.steps if s["step"] == "timing" and s["name"] == "input model"]
        print(f"bert_ptq_workload run: {wall:.1f} s wall, {len(output.get_output_models())} candidates, "
              f"{len(output.failures)} failures")
        if input_timing:
            seconds = input_timing[0]["seconds"]
            line("timing the torch input model (s)", f"{seconds:.1f}" + (" (cached)" if input_timing[0]["cached"] else ""),
                 "<= 10", seconds <= 10)
        for shape in shapes:
            label = shape_name(shape)
            by_id = {m.model_id: m for m in models}
            fp32 = by_id["conversion"].metrics["latency-p50"]["by_shape"][label]
            first = next(m for m in models if m.metrics["latency-p50"]["by_shape"][label].get("rank") == 1)
            m = measured[label]
            fp32_ms = m.interval("conversion")[0] * 1000
            ratios = {model_id: m.ratio(model_id) for model_id in by_id if model_id != "conversion"}
            good = {k: v for k, v in ratios.items() if by_id[k].metrics[FIDELITY]["value"] >= 0.99}
            best_id = min(good, key=lambda k: good[k][0]) if good else None
            print(f"\n== {label} (weight {shape['weight']}) ==")
            print(f"FP32 export p50 {fp32_ms:.2f} ms ({shape['batch_size'] * 1000 / fp32_ms:.1f} samples/s) in the sweep; "
                  f"{fp32['value']:.2f} ms [{fp32['interval'][0]:.2f}, {fp32['interval'][1]:.2f}] in the run")
            # The same model's own times say whether the sweep and the run saw the same machine: a host whose
            # speed shifts for minutes can change a close order between them.
            per_round = np.median(m.arms["conversion"].matrix(), axis=1) * 1000
            print(f"machine state: the FP32 export ran {fp32_ms / fp32['value']:.2f}x its run time in the sweep; "
                  f"its {len(per_round)} sweep rounds' medians span {per_round.min():.2f}-{per_round.max():.2f} ms")
            for model_id, (ratio, low, high) in sorted(ratios.items(), key=lambda kv: kv[1][0]):
                engine = by_id[model_id].metrics["latency-p50"]["by_shape"][label]
                print(f"   {model_id:<48} x{ratio:.3f} [{low:.3f}, {high:.3f}]  fidelity "
                      f"{by_id[model_id].metrics[FIDELITY]['value']:.5f}  run: {engine['value']:.2f} ms rank {engine.get('rank')}"
                      f" ({engine['rounds']} rounds, {engine['stopped']})")
            if first.model_id == "conversion":
                line(f"{label}: first-ranked is the FP32 export", first.model_id, "an INT8 candidate", False)
                continue
            ratio, low, high = ratios[first.model_id]
            fidelity = first.metrics[FIDELITY]["value"]
            print(f"first-ranked {first.model_id}; sweep best {best_id}")
            line(f"{label}: first-ranked / FP32 export (p50 time)", f"{ratio:.3f} [{low:.3f}, {high:.3f}]", "<= 0.50",
                 ratio <= 0.50)
            line(f"{label}: its fidelity (mean cosine)", f"{fidelity:.5f}", ">= 0.99", fidelity >= 0.99)
            if best_id:
                gap = ratio / good[best_id][0] - 1
                line(f"{label}: first-ranked vs sweep's best ({best_id})", f"{gap:+.1%}", "<= +3%", gap <= 0.03)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
