"""Locks for running jobs side by side without letting them disturb each other's measurements.

Passes and accuracy evaluations may share the machine; a step that measures (latency, throughput,
session tuning) must have it to itself, or the jobs would measure each other. The machine lock is
a flock on a file in the cache's jobs folder, so two runs that share a cache on one machine keep
out of each other's measurements too.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path


class MachineLock:
    """Up to `slots` steps of ordinary work at once, each holding the lock shared, or one step that
    measures, alone.

    A waiting measurement does not stop new ordinary work (flock lets shared holders in): holding
    it back would leave the machine half idle while running work drains. It cannot starve, because
    the engine keeps only so many candidates in flight: once each of them is at its measurement,
    nothing else holds the lock.
    """

    def __init__(self, path: Path, slots: int, record):
        self.path, self.record = Path(path), record  # record(label, "shared" | "alone", start, end)
        self._slots = threading.Semaphore(slots)
        self._held = threading.local()

    @contextmanager
    def hold(self, label: str, alone: bool):
        if getattr(self._held, "depth", 0):  # this thread holds it already (a step inside a step)
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with nullcontext() if alone else self._slots:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # each holder its own open file, its own lock
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
                self._held.depth, began = 1, time.time()
                try:
                    yield
                finally:
                    self._held.depth = 0
                    self.record(label, "alone" if alone else "shared", began, time.time())
            finally:
                os.close(fd)


class SingleFlight:
    """One lock per key: when two candidates need the same pass run, the second waits for the first
    and then finds its result in the cache instead of computing it again."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
