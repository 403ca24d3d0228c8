"""Issue 3's figures: dispatch overhead per job (venv, docker warm container) over the local system,
and bert_ptq's wall time through the docker cpu image against the local run.

    python benchmarks/systems_overhead.py [dispatch] [bert_ptq]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tiny_onnx(folder: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [weight])
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    return folder


def dispatch(repeats: int = 7) -> None:
    from olive_systems.job import CONTRACT_VERSION, write_json
    from olive_systems.models import folder_sha256
    from olive_systems.systems import make_system

    root = Path(tempfile.mkdtemp())
    model = tiny_onnx(root / "cache" / "model")
    jobs = root / "jobs"
    jobs.mkdir()
    systems = {
        "local": make_system({"type": "LocalSystem"}, "local"),
        "venv": make_system({"type": "VenvSystem", "requirements": str(REPO / "images/cpu/requirements.txt")}, "venv"),
        "docker": make_system({"type": "DockerSystem", "image": "cpu"}, "docker"),
    }
    medians = {}
    for name, system in systems.items():
        try:
            system.start({"cache": root / "cache", "jobs": jobs, "input": root / "cache"})
        except Exception as exc:  # docker may be missing where this runs
            print(f"{name}: not measured ({exc})")
            continue
        times = []
        for index in range(repeats):
            job_dir = jobs / f"{name}-{index}"
            job_dir.mkdir()
            job = {"contract_version": CONTRACT_VERSION, "job_id": job_dir.name, "kind": "pass",
                   "pass": {"name": "q", "type": "OnnxDynamicQuantization",
                            "config": {"weight_type": "QInt8", "per_channel": False, "reduce_range": False,
                                       "op_types_to_quantize": None, "nodes_to_exclude": [], "op_types_to_exclude": [],
                                       "extra_options": {}}},
                   "input_model": {"type": "OnnxModel", "path": str(model), "hash": folder_sha256(model)},
                   "accelerator": {"device": "cpu", "execution_provider": "CPUExecutionProvider"}, "data": {},
                   "reference": None, "output_dir": str(job_dir / "output"), "timeout_s": 300}
            write_json(job_dir / "job.json", job)
            started = time.perf_counter()
            result = system.run_job(job_dir / "job.json", 300, lambda line: None)
            times.append(time.perf_counter() - started)
            assert result["status"] == "succeeded", result["error"]
        system.stop()
        medians[name] = statistics.median(times[1:])  # the first local job pays the imports once
        print(f"{name:<7} median per job {medians[name] * 1000:7.0f} ms  (runs: {', '.join(f'{t * 1000:.0f}' for t in times)})")
    for name, limit in (("venv", 0.5), ("docker", 1.0)):
        if name in medians:
            overhead = medians[name] - medians["local"]
            print(f"{'PASS' if overhead <= limit else 'MISS'}  {name} dispatch overhead over local: {overhead:.2f} s  target <= {limit} s")
    shutil.rmtree(root, ignore_errors=True)


def bert_ptq() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("bert_ptq", "bert_ptq_cpu"):
            started = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "olive-systems"), "run", "--config", f"recipes/{recipe}.yaml",
                            "--cache-dir", f"{tmp}/{recipe}-cache", "--output-dir", f"{tmp}/{recipe}-out"],
                           cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls[recipe] = time.perf_counter() - started
            print(f"{recipe:<14} cold cache, image already built: {walls[recipe]:.1f} s")
    ratio = walls["bert_ptq_cpu"] / walls["bert_ptq"]
    print(f"{'PASS' if ratio <= 1.5 else 'MISS'}  bert_ptq through docker cpu / local: {ratio:.2f}  target <= 1.5")


if __name__ == "__main__":
    wanted = sys.argv[1:] or ["dispatch", "bert_ptq"]
    if "dispatch" in wanted:
        dispatch()
    if "bert_ptq" in wanted:
        bert_ptq()
