"""Issue 4's figures: bert_ptq from an empty local cache with a warm blob cache (Azurite), against the
fully-local warm re-run and the cold run.   python benchmarks/shared_cache.py"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_shared_cache import Azurite  # noqa: E402  (the same Azurite the tests start)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        azurite = Azurite(tmp / "azurite")
        azurite.start()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
        container = f"bench-{uuid.uuid4().hex[:8]}"

        def run(cache: str) -> float:
            started = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "olive-systems"), "run", "--config", "recipes/bert_ptq.yaml",
                            "--cache-dir", str(tmp / cache), "--output-dir", str(tmp / f"out-{cache}"),
                            "--container-name", container], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - started

        try:
            cold = run("first")
            warm_local = statistics.median(run("first") for _ in range(3))
            from_blob = statistics.median(run(f"empty{i}") for i in range(3))
        finally:
            azurite.stop()
    print(f"cold run (computes and pushes): {cold:.1f} s")
    print(f"warm local re-run (median of 3): {warm_local:.2f} s")
    print(f"empty local cache, warm blob cache (median of 3): {from_blob:.2f} s")
    for name, ratio, limit in (("blob-warm / local-warm", from_blob / warm_local, 2.0),
                               ("blob-warm / cold", from_blob / cold, 0.2)):
        print(f"{'PASS' if ratio <= limit else 'MISS'}  {name}: {ratio:.2f}  target <= {limit}")


if __name__ == "__main__":
    main()
