"""LocalSystem: runs jobs in the orchestrator's own process, through the same runner as any system."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path


def package_versions(names) -> dict:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class LocalSystem:
    can_run_torch = True

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
