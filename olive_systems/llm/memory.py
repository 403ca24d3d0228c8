"""Peak resident memory of loading a decoder and generating a short sequence, in a fresh process.

The job process that asks has other things loaded (a tokenizer, datasets, maybe torch and another
model), so the measurement runs in a new interpreter (`python -m olive_systems.llm.memory`, the
request as JSON on stdin) that imports the runtime libraries of the model's runner first and reads
its high-water mark, then opens the model, generates, and reads it again:

* ``process_peak_rss_mb``: the fresh process's peak resident set (VmHWM) at the end: runtime
  libraries, model and generation together, what a process that serves this model alone needs;
* ``peak_rss_mb``: that peak minus the peak of the same process after it imported the same runtime
  libraries (onnxruntime; onnxruntime-genai; torch and transformers) and before it loaded the
  model: the model's own cost in its runtime, comparable between candidates of one runtime.

VmHWM from /proc/self/status, not getrusage's ru_maxrss: on Linux ru_maxrss survives exec() and may
report the (forked or vfork-borrowed) parent's resident set; VmHWM belongs to the new address space.
MiB (2**20 bytes) both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import OliveSystemsError
from ..models import ModelRef


def peak_memory(model: ModelRef, execution_provider: str, prompt_ids, new_tokens: int,
                intra_op_threads: int | None = None, kind: str | None = None, timeout_s: float = 3600) -> dict:
    """{"peak_rss_mb", "process_peak_rss_mb"} of a fresh process that loads the model and generates."""
    from .runners import decoder_kind

    request = {"model": model.to_dict(), "execution_provider": execution_provider,
               "prompt_ids": [int(i) for i in prompt_ids], "new_tokens": int(new_tokens),
               "intra_op_threads": intra_op_threads, "kind": kind or decoder_kind(model)}
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        done = subprocess.run([sys.executable, "-m", "olive_systems.llm.memory"], input=json.dumps(request),
                              capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise OliveSystemsError(f"the memory measurement of {model.path} ran past {timeout_s:g} s",
                                "lower metric_config.new_tokens / prompt_tokens of the memory metric") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-3:]
        raise OliveSystemsError(f"the memory measurement process failed (exit {done.returncode}): {' | '.join(tail)}",
                                "run the model with olive_systems.llm.runners.open_decoder to see the error")
    found = json.loads(lines[-1])
    mib = 1024.0  # kB -> MiB
    return {"peak_rss_mb": round(max(found["peak_kb"] - found["baseline_kb"], 0) / mib, 3),
            "process_peak_rss_mb": round(found["peak_kb"] / mib, 3)}


def high_water_kb() -> int:
    """This process's peak resident set in kB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource  # no /proc (macOS): ru_maxrss, in bytes there

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _child() -> None:
    import numpy as np

    from .runners import import_runtime, open_decoder

    request = json.loads(sys.stdin.read())
    import_runtime(request["kind"])
    if request["kind"] == "torch" and request["intra_op_threads"]:  # a process of its own: torch's setting is ours
        import torch

        torch.set_num_threads(int(request["intra_op_threads"]))
    baseline = high_water_kb()
    decoder = open_decoder(ModelRef.from_dict(request["model"]), request["execution_provider"],
                           request["intra_op_threads"], kind=request["kind"])
    decoder.generate(np.asarray(request["prompt_ids"], dtype=np.int64), request["new_tokens"])
    print(json.dumps({"baseline_kb": baseline, "peak_kb": high_water_kb()}), flush=True)


if __name__ == "__main__":
    _child()
