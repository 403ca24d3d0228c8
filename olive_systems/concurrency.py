"""Locks for running jobs side by side without letting them disturb each other's measurements.

Passes and accuracy evaluations may share the machine; a latency or throughput measurement (and
session tuning, which measures) must have it to itself, or the jobs would measure each other.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class MachineLock:
    """Shared for ordinary jobs, exclusive for measurements. A waiting measurement blocks new shared
    jobs, so a stream of passes cannot starve it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def hold(self, exclusive: bool):
        with self._cond:
            if exclusive:
                self._waiting_exclusive += 1
                self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                self._waiting_exclusive -= 1
                self._exclusive = True
            else:
                self._cond.wait_for(lambda: not self._exclusive and self._waiting_exclusive == 0)
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


class SingleFlight:
    """One lock per key: when two candidates need the same pass run, the second waits for the first
    and then finds its result in the cache instead of computing it again."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
