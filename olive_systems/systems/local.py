"""LocalSystem: runs jobs in the orchestrator's own process, through the same runner as any system."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache(maxsize=None)
def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names) -> dict:
    """Installed versions, looked up once per process: every cache key asks again."""
    return {name: _version(name) for name in names}


class LocalSystem:
    can_run_torch = True
    max_parallel_jobs = 1  # jobs run in this very process: one at a time

    def __init__(self, config: dict, name: str = "local_system"):
        self.config, self.name = config, name

    def start(self, mounts: dict) -> None:
        """Nothing to start: the process is already here."""

    def stop(self) -> None:
        pass

    def fingerprint(self, packages: tuple) -> dict:
        """What, besides the job, decides a result here: the versions of the packages it uses."""
        return {"system": "local", "versions": package_versions((*packages, "olive-systems"))}

    def available_providers(self) -> list[str]:
        import onnxruntime

        return onnxruntime.get_available_providers()

    def run_job(self, job_path: Path, timeout_s: float, on_log) -> dict:
        from ..runner import run_job_file

        return run_job_file(job_path, on_log=on_log)
