"""Side-by-side timing runs each model in a worker process of its own (evaluation/timing_worker.py):
real onnxruntime sessions in real subprocesses, as the engine's timing job starts them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from olive_systems.evaluation.evaluator import ModelRunner
from olive_systems.evaluation.timing_worker import WorkerError, WorkerRunner
from olive_systems.models import ModelRef
from test_session_tuning_options import tiny_onnx

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> ModelRef:
    folder = tiny_onnx(tmp_path_factory.mktemp("worker") / "model")
    return ModelRef(type="OnnxModel", path=str(folder), hash="0" * 64)


def test_a_worker_runs_and_times_the_model_in_its_own_process(model):
    worker = WorkerRunner(model, "CPUExecutionProvider").ready()
    try:
        assert worker.input_names == ["x"] and worker._process.pid != os.getpid()
        feed = worker.dummy_at(3, 8)
        assert feed["x"].shape == (3, 8)
        feed = {"x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)}
        np.testing.assert_allclose(worker(feed), ModelRunner(model, "CPUExecutionProvider")(feed), rtol=1e-6)
        call = worker.timed(feed)
        assert all(0 < call() < 1 for _ in range(3))  # the seconds the worker measured for one call
        with pytest.raises(WorkerError) as error:  # a bad feed fails in the worker; the worker goes on
            worker({"x": np.zeros((3, 5), dtype=np.float32)})
        assert error.value.kind != "WorkerError" and "x" in str(error.value)
        assert call() > 0
    finally:
        worker.close()
    assert worker._process.returncode == 0


def test_a_model_that_cannot_open_fails_in_ready(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    worker = WorkerRunner(ModelRef(type="OnnxModel", path=str(tmp_path), hash="0" * 64), "CPUExecutionProvider")
    try:
        with pytest.raises(WorkerError):
            worker.ready()
    finally:
        worker.close()


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(model, tmp_path):
    """multiprocessing's spawn would import the caller's __main__ in each worker: a user's script
    that times models at its top level would run again in every worker."""
    script = tmp_path / "user_script.py"
    script.write_text(
        "from olive_systems.evaluation.timing import time_together\n"
        "from olive_systems.models import ModelRef\n"
        f"model = ModelRef(type='OnnxModel', path={model.path!r}, hash='0' * 64)\n"
        "metric = {'name': 'latency', 'type': 'latency', 'sub_types': [{'name': 'avg'}],\n"
        "          'metric_config': {'warmup_num': 1, 'repeat_test_num': 10, 'budget_s': 1}}\n"
        "found = time_together([('a', model), ('b', model)], [metric], {}, 'CPUExecutionProvider', lambda m: None)\n"
        "print('timed', sorted(found), found['b']['latency-avg']['value'] > 0)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["timed ['a', 'b'] True"]
