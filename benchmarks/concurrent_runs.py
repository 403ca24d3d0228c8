"""Issue 13's concurrency figure: three runs of bert_ptq started at once on one cold cache, against one
run alone on a cold cache. Prints the steps the recipe needs, the steps the three runs computed in all
(jobs run: a step reused from the cache runs none), and the wall-time ratio.

Targets: steps computed = steps needed (14 for bert_ptq), three-at-once wall <= 1.1 x one run.

    python benchmarks/concurrent_runs.py                    # bert_ptq, the figure
    python benchmarks/concurrent_runs.py --runs 3 --recipe recipes/bert_ptq.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BIN, ENV, REPO


def start(recipe: str, cache: Path, out: Path) -> subprocess.Popen:
    with open(f"{out}.log", "w") as log:  # a file, not a pipe: nobody reads a pipe while the runs go
        proc = subprocess.Popen([str(BIN / "olive-systems"), "run", "--config", recipe, "--cache-dir", str(cache),
                                 "--output-dir", str(out)], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    proc.log = f"{out}.log"
    return proc


def finish(procs: list[subprocess.Popen]) -> list[float]:
    """Waits for every run; returns when each one ended (perf_counter seconds)."""
    ended = {}
    while len(ended) < len(procs):
        for proc in procs:
            if proc not in ended and proc.poll() is not None:
                ended[proc] = time.perf_counter()
                if proc.returncode != 0:
                    raise SystemExit(f"a run failed (exit {proc.returncode}):\n{Path(proc.log).read_text()[-3000:]}")
        time.sleep(0.05)
    return [ended[proc] for proc in procs]


def record(out: Path) -> tuple[set[str], int]:
    """(keys of the steps the run needed, jobs it ran: the steps it computed itself)."""
    data = json.loads((out / "workflow_output.json").read_text())
    return {step["key"] for step in data["steps"]}, len(data["jobs"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/bert_ptq.yaml")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    # Read the libraries from disk once, so the run alone (first) does not also pay for a cold page cache.
    subprocess.run([sys.executable, "-c", "import torch, onnxruntime, transformers"], env=ENV, check=True)
    with tempfile.TemporaryDirectory(prefix="concurrent-runs-") as tmp:
        tmp = Path(tmp)
        began = time.perf_counter()
        finish([start(args.recipe, tmp / "alone-cache", tmp / "alone")])
        alone_s = time.perf_counter() - began
        needed, _ = record(tmp / "alone")

        began = time.perf_counter()
        ended = finish([start(args.recipe, tmp / "shared-cache", tmp / f"run{i}") for i in range(args.runs)])
        together_s = max(ended) - began
        records = [record(tmp / f"run{i}") for i in range(args.runs)]
    # Steps after a session-tuning pass have keys that depend on what it measured, so the runs at once
    # are compared with each other (they share every result), not with the run alone.
    shared_needed = set().union(*(keys for keys, _ in records))
    computed = sum(jobs for _, jobs in records)
    ratio = together_s / alone_s
    print(f"{args.recipe}: one run alone {alone_s:.1f} s ({len(needed)} steps); {args.runs} runs at once on one "
          f"cold cache {together_s:.1f} s, the last ending {max(ended) - min(ended):.1f} s after the first")
    print(f"steps the {args.runs} runs needed: {len(shared_needed)} distinct "
          f"({'the same in every run' if all(keys == shared_needed for keys, _ in records) else 'NOT the same in every run'}); "
          f"computed in all: {computed} (by run: {', '.join(str(jobs) for _, jobs in records)})")
    print(f"{'PASS' if computed == len(shared_needed) else 'MISS'}  steps computed / needed: "
          f"{computed} / {len(shared_needed)}  target equal")
    print(f"{'PASS' if ratio <= 1.1 else 'MISS'}  {args.runs} at once / one alone (wall): {ratio:.3f}  target <= 1.10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
