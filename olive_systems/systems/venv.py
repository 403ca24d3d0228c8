"""VenvSystem: jobs run as subprocesses of a Python virtual environment with pinned packages.

The environment is built once from a requirements file and reused by the file's hash; it counts
as built only when its marker is written, so a failed install is never reused. An existing
interpreter (`python:`) is used as is. The runner code comes from this checkout via PYTHONPATH, so
the venv runs exactly the host's olive-systems.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import OliveSystemsError
from ..job import read_result

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the olive_systems package
MARKER = ".olive-systems-complete"


def default_venv_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "olive-systems" / "venvs"


class VenvSystem:
    def __init__(self, config: dict, name: str = "venv_system"):
        self.config, self.name = config, name
        self.can_run_torch = bool(config.get("can_run_torch", False))
        self.python: Path | None = None

    def start(self, mounts: dict) -> None:
        self.python = Path(self.config["python"]) if self.config.get("python") else self.ensure_venv()
        if not self.python.exists():
            raise OliveSystemsError(f"system '{self.name}': interpreter {self.python} does not exist",
                                    "fix systems.<name>.python or give requirements instead")

    def stop(self) -> None:
        pass

    def fingerprint(self, packages: tuple) -> dict:
        """The pinned requirements decide the packages; an existing interpreter is named by its path."""
        if self.config.get("python"):
            return {"system": "venv", "python": self.config["python"]}
        return {"system": "venv", "requirements": hashlib.sha256(Path(self.config["requirements"]).read_bytes()).hexdigest()}

    def available_providers(self) -> list[str]:
        import json

        from .docker import PROVIDERS_PROBE

        probe = subprocess.run([str(self.python), "-c", PROVIDERS_PROBE], capture_output=True, text=True)
        if probe.returncode != 0:
            raise OliveSystemsError(f"system '{self.name}': onnxruntime does not load in {self.python}: "
                                    f"{probe.stderr.strip()[-300:]}", "add onnxruntime to the venv's requirements")
        return json.loads(probe.stdout.strip().splitlines()[-1])

    def ensure_venv(self) -> Path:
        requirements = Path(self.config["requirements"])
        digest = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:16]
        root = Path(self.config.get("venv_dir") or default_venv_root())
        folder = root / digest
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{digest}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs building the same venv wait for each other
            if (folder / MARKER).exists():
                return folder / "bin" / "python"
            shutil.rmtree(folder, ignore_errors=True)  # a half-built venv from a failed install
            try:
                subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True, text=True)
                install = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                          "-r", str(requirements)], capture_output=True, text=True)
            except subprocess.CalledProcessError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise OliveSystemsError(f"system '{self.name}': cannot create a venv: {exc.stderr.strip()[-300:]}",
                                        "install python3-venv") from None
            if install.returncode != 0:
                shutil.rmtree(folder, ignore_errors=True)
                tail = (install.stderr or install.stdout).strip().splitlines()[-3:]
                raise OliveSystemsError(f"system '{self.name}': installing {requirements.name} failed: {' | '.join(tail)}",
                                        "fix the pins in the requirements file")
            (folder / MARKER).write_text(str(requirements))
        return folder / "bin" / "python"

    def run_job(self, job_path: Path, timeout_s: float, on_log) -> dict:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        process = subprocess.Popen([str(self.python), "-m", "olive_systems.runner", str(job_path)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        tail, pump = stream_lines(process.stdout, on_log)
        try:
            exit_code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            exit_code = 124
        pump.join(timeout=5)
        return read_result(job_path, list(tail), time.perf_counter() - started, exit_code, timeout_s)


def stream_lines(stream, on_log) -> tuple[collections.deque, threading.Thread]:
    """Forward a process's output line by line as it comes, keeping the last lines."""
    tail: collections.deque = collections.deque(maxlen=40)

    def pump():
        for line in stream:
            line = line.rstrip("\n")
            tail.append(line)
            on_log(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return tail, thread
