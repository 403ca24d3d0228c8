"""What several benchmarks share: where the repository and the olive-systems entry point are, the offline
environment the runs get, and the CPU line they print. Imported as `common` (each benchmark runs as a
script, so its own folder is first on sys.path)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ENV = {**os.environ, **OFFLINE}


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni")) -> str:
    """`avx2=yes avx512f=no ..., N cores`: the instruction sets a CPU figure depends on."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return " ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in wanted) + f", {os.cpu_count()} cores"


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


@contextlib.contextmanager
def busy(processes: int):
    """`processes` background processes that keep a core busy each while the block runs (a loaded
    machine); the load is there a second before the block starts."""
    workers = [multiprocessing.Process(target=_spin, args=(time.time() + 3 * 3600,), daemon=True)
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        if workers:
            time.sleep(1)
        yield
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()
