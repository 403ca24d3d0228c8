"""Locks for running jobs side by side without letting them disturb each other's measurements.

Passes and accuracy evaluations may share the machine; a step that measures (latency, throughput,
session tuning) must have it to itself, or the jobs would measure each other. The machine lock is
a flock on a file in the cache's jobs folder, so two runs that share a cache on one machine keep
out of each other's measurements too (the slots for ordinary work are counted per run).

SingleFlight makes each step (a pass run, an evaluation) computed once however many candidates or
runs need it: runs that share a cache wait for each other through a lock file per key.
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
    """One lock per key, across the threads of this run and across every run that shares the cache:
    when two candidates (or two runs) need the same step, the second waits for the first and then
    finds its result in the cache instead of computing it again.

    Across processes the lock is a flock on <folder>/<key>.lock. The OS drops a flock when its
    process dies, so a run that is killed while computing a step never blocks the others: the next
    one in line takes the lock, finds no entry and computes it.
    """

    def __init__(self, folder: Path | None = None, on_wait=None):
        self.folder = Path(folder) if folder is not None else None
        self.on_wait = on_wait  # on_wait(key, holder_pid): another run computes this key; we wait
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def lock(self, key: str):
        with self._guard:
            thread_lock = self._locks.setdefault(key, threading.Lock())
        with thread_lock:  # threads of this run queue here: one open file per key and run, not per thread
            if self.folder is None:
                yield
                return
            with file_lock(self.folder / f"{key}.lock", lambda pid: self.on_wait and self.on_wait(key, pid)):
                yield


@contextmanager
def file_lock(path: Path, on_wait=None):
    """An exclusive flock on `path`, which holds the holder's pid. The holder removes the file as it
    lets go, so finished keys leave no files behind; a waiter that then wakes on the removed file
    sees it is no longer the one at `path` and tries again (the usual unlink-safe lock-file loop)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not told:
                    told = True
                    on_wait(_read_pid(fd))
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was removed (or replaced) while we waited: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        try:
            os.unlink(path)  # while still holding it: nobody can lock this file and think it current
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_stale_lock(path: Path) -> bool:
    """Remove a lock file nobody holds (its run was killed); False when a live run holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        if _same_file(fd, path):
            os.unlink(path)
            return True
        return False
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
