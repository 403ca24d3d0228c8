"""A model timed in a process of its own, as it is served: one model's sessions per process.

Timing several models side by side (timing.time_together) interleaves their calls against drift.
Done with all their sessions in one process, it let the models disturb each other (measured once,
with a script not kept in the repo): on a 2-core VM,
bert_ptq's fused and unfused per-channel INT8 models at batch 8 x 128, interleaved with the FP32
export, came out unfused-first by 11-13% in three of four fresh sets of sessions and fused-first by
7% in the fourth; with each model in its own process and the same interleaving, fused-first by
6-9% in four of four. So each model runs in a worker process here, and the worker times its own
calls: the pipe's round trip is not part of a figure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection

from ..models import ModelRef


class WorkerError(RuntimeError):
    """An exception in the worker, by its type's name and message."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class WorkerRunner:
    """ModelRunner's calls (run, dummy_feed, dummy_at, timed), served by a worker process that holds
    the model. timed(feed)() returns the seconds the worker measured for one call (compare's
    self_timed). The worker starts at once; ready() waits until it has opened the model."""

    def __init__(self, model: ModelRef, execution_provider: str):
        # A fresh interpreter (no thread pools or locks inherited) that, unlike multiprocessing's spawn,
        # does not import the caller's __main__: a user's script without a main guard is not run again.
        from_parent, to_worker = os.pipe()  # (read end, write end)
        from_worker, to_parent = os.pipe()
        self._process = subprocess.Popen([sys.executable, "-m", __name__, str(from_parent), str(to_parent)],
                                         pass_fds=(from_parent, to_parent))
        os.close(from_parent)
        os.close(to_parent)
        self._to, self._from = Connection(to_worker, readable=False), Connection(from_worker, writable=False)
        self._to.send((model.to_dict(), execution_provider))
        self.input_names: list[str] = []

    def ready(self) -> "WorkerRunner":
        self.input_names = self._answer()
        return self

    def _answer(self):
        try:
            ok, value = self._from.recv()
        except EOFError:
            raise WorkerError("WorkerExited", f"the timing worker exited with code {self._process.wait()}") from None
        if not ok:
            raise WorkerError(*value)
        return value

    def _ask(self, *message):
        self._to.send(message)
        return self._answer()

    def __call__(self, feed: dict):
        return self._ask("run", feed)

    def dummy_feed(self) -> dict:
        return self._ask("dummy")

    def dummy_at(self, batch: int, sequence: int) -> dict:
        return self._ask("dummy_at", batch, sequence)

    def timed(self, feed: dict):
        key = self._ask("feed", feed)
        return lambda: self._ask("time", key)

    def close(self) -> None:
        try:
            self._to.send(("close",))
        except OSError:  # the worker is gone already
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._to.close()
        self._from.close()


def _serve(requests: Connection, answers: Connection) -> None:
    from .evaluator import ModelRunner

    model, execution_provider = requests.recv()
    try:
        runner = ModelRunner(ModelRef.from_dict(model), execution_provider)
    except Exception as exc:  # noqa: BLE001 - the parent reports it against this model
        answers.send((False, (type(exc).__name__, str(exc))))
        return
    answers.send((True, runner.input_names))
    calls = []
    while True:
        request, *args = requests.recv()
        if request == "close":
            return
        try:
            if request == "run":
                answer = runner(args[0])
            elif request == "dummy":
                answer = runner.dummy_feed()
            elif request == "dummy_at":
                answer = runner.dummy_at(*args)
            elif request == "feed":
                calls.append(runner.timed(args[0]))
                answer = len(calls) - 1
            else:  # "time": one call, timed here
                call = calls[args[0]]
                start = time.perf_counter()
                call()
                answer = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - the parent reports it against this model
            answers.send((False, (type(exc).__name__, str(exc))))
            continue
        answers.send((True, answer))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
