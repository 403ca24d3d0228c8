"""What a job's libraries write straight to the process's stdout and stderr (torch's ONNX exporter
prints a whole TorchScript graph when an export fails) goes to the job's log file, job.log beside
job.json; the job's log (the console, the result's log tail) gets it condensed."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

LOG_FILE = "job.log"
LINE_CHARS = 300  # a longer line is cut
HEAD_LINES, TAIL_LINES = 8, 8  # of a longer text, what the log shows


@contextlib.contextmanager
def captured_output(log_path: Path, log):
    """Point file descriptors 1 and 2 at log_path while the job runs. Python-level writers that are
    the terminal (the orchestrator's console, when the job runs in its process) keep it."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        sink = open(log_path, "ab")
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except OSError:  # nowhere to write it (a read-only job folder, no stdout): the output goes where it went
        sink = None
    if sink is None:
        yield
        return
    streams = (sys.stdout, sys.stderr)
    start = sink.tell()
    try:
        with sink:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            sys.stdout, sys.stderr = _kept(sys.stdout, 1, saved), _kept(sys.stderr, 2, saved)
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                for fd in (1, 2):
                    os.dup2(saved[fd], fd)
                replaced = [s for s, old in zip((sys.stdout, sys.stderr), streams) if s is not old]
                sys.stdout, sys.stderr = streams
                for stream in replaced:
                    stream.close()
    finally:
        for fd in saved.values():
            os.close(fd)
        for line in condensed(_read_from(log_path, start), log_path):
            log(line)


def _kept(stream, fd: int, saved: dict):
    """A stream writing where fd wrote before, if the stream is that fd (else, e.g. under a test's capture, itself)."""
    try:
        if stream.fileno() != fd:
            return stream
    except Exception:
        return stream
    return open(os.dup(saved[fd]), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                errors="replace")


def _read_from(path: Path, start: int) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read().decode("utf-8", errors="replace")


def condensed(text: str, log_path: Path) -> list[str]:
    """A few lines of a long text, each cut short, pointing at the file that holds all of it."""
    lines = [line for line in text.splitlines() if line.strip()]
    cut = [line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + f" ... ({len(line)} characters)" for line in lines]
    if len(cut) <= HEAD_LINES + TAIL_LINES:
        return cut + ([f"(whole lines in the job's log file, {log_path.name})"] if cut != lines else [])
    left_out = len(cut) - HEAD_LINES - TAIL_LINES
    return [*cut[:HEAD_LINES], f"... {left_out} lines left out: the job's log file ({log_path.name}) has them all",
            *cut[-TAIL_LINES:]]
