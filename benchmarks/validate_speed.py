"""`olive-systems validate` on every recipe in recipes/: wall seconds per recipe, target <= 1 s each.

Each recipe is validated as a user would, in a fresh process (the import time counts), ROUNDS times
round by round (so a burst of load on the machine hits every recipe alike); the median is the figure.
A warm-up round first compiles the byte code, as any second run finds it.

    .venv/bin/python benchmarks/validate_speed.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

from common import BIN, ENV, REPO

TARGET_S = 1.0


def validate(recipe: Path) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "olive-systems"), "validate", "--config", str(recipe)], cwd=REPO, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - started, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    recipes = sorted(p for p in (REPO / "recipes").iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    for recipe in recipes:  # warm-up
        validate(recipe)
    seconds: dict[Path, list[float]] = {recipe: [] for recipe in recipes}
    codes: dict[Path, int] = {}
    for _ in range(args.rounds):
        for recipe in recipes:
            elapsed, codes[recipe] = validate(recipe)
            seconds[recipe].append(elapsed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"olive-systems validate, {args.rounds} rounds, {os.cpu_count()} cores, load average {load:.2f}")
    worst = 0.0
    for recipe in recipes:
        median = statistics.median(seconds[recipe])
        worst = max(worst, median)
        status = "valid" if codes[recipe] == 0 else f"exit {codes[recipe]}"
        print(f"{'PASS' if median <= TARGET_S else 'MISS'}  {recipe.name:<28} median {median:.3f} s  "
              f"(min {min(seconds[recipe]):.3f}, max {max(seconds[recipe]):.3f})  {status}")
    print(f"{'PASS' if worst <= TARGET_S else 'MISS'}  slowest recipe: {worst:.3f} s, target <= {TARGET_S:g} s each")
    return 0 if worst <= TARGET_S and all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
