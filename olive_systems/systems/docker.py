"""DockerSystem: jobs run in one warm container per workflow, from a per-accelerator image.

The container starts once (`--init`, `--network none`, the host user's uid:gid, a memory limit),
with the cache and the input model mounted read-only and the jobs folder as the one writable
mount; each job is a `docker exec` of the runner under `timeout`. The host's olive_systems source
is mounted too, so the container runs exactly the host's code. The container is removed at the
end of the run, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import OliveSystemsError
from ..job import read_result
from .venv import SOURCE_ROOT

PROVIDERS_PROBE = "import json, onnxruntime as o; print(json.dumps(o.get_available_providers()))"
DAEMON_FIX = "start the Docker daemon (sudo systemctl start docker, or sudo dockerd &) or set DOCKER_HOST"


def docker_client():
    try:
        import docker
    except ImportError:
        raise OliveSystemsError("the docker Python SDK is not installed", "pip install 'olive-systems[docker]'") from None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        reason = str(exc).splitlines()[0][:200]
        raise OliveSystemsError(f"Docker daemon is not reachable ({reason})", DAEMON_FIX) from None


class DockerSystem:
    can_run_torch = False

    def __init__(self, config: dict, name: str = "docker_system"):
        self.config, self.name = config, name
        self.container = None
        self.mounts: dict[str, str] = {}  # host folder -> container folder

    @property
    def tag(self) -> str:
        from ..images import system_image

        return system_image(self.config, "image_tag")

    def fingerprint(self, packages: tuple) -> dict:
        """The image tag hashes its Dockerfile and exact pins, so it names every package version."""
        return {"system": "docker", "image": self.tag}

    def start(self, mounts: dict) -> None:
        import docker

        self.client = docker_client()
        try:
            self.client.images.get(self.tag)
        except docker.errors.ImageNotFound:
            image = self.config.get("image", "cpu")
            raise OliveSystemsError(f"system '{self.name}': image {self.tag} is not built",
                                    f"make images (or python -m olive_systems.images build {image})") from None
        self.mounts = {str(Path(mounts["cache"])): "/olive/cache", str(Path(mounts["input"])): "/olive/input",
                       str(Path(mounts["jobs"])): "/olive/jobs", str(SOURCE_ROOT / "olive_systems"): "/olive/src/olive_systems"}
        self._launch()

    def _launch(self) -> None:
        import docker

        volumes = {host: {"bind": inside, "mode": "rw" if inside == "/olive/jobs" else "ro"} for host, inside in self.mounts.items()}
        gpus = any(acc.get("device") == "gpu" for acc in self.config.get("accelerators", []))
        self.container = self.client.containers.run(
            self.tag, ["sleep", "infinity"], detach=True, init=True, network_mode="none",
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None,
            user=f"{os.getuid()}:{os.getgid()}", mem_limit=self.config.get("memory_limit", "8g"), volumes=volumes,
            environment={"PYTHONPATH": "/olive/src", "HOME": "/tmp", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            labels={"olive-systems": self.name}, working_dir="/tmp",
        )

    def available_providers(self) -> list[str]:
        code, output = self.container.exec_run(["python", "-c", PROVIDERS_PROBE])
        if code != 0:
            raise OliveSystemsError(f"system '{self.name}': onnxruntime does not load in {self.tag}: "
                                    f"{output.decode(errors='replace').strip()[-300:]}", "rebuild the image with make images")
        return json.loads(output.decode().strip().splitlines()[-1])

    def inside(self, path: str) -> str:
        """A host path as the container sees it."""
        for host, inside in sorted(self.mounts.items(), key=lambda item: -len(item[0])):
            if path == host or path.startswith(host + "/"):
                return inside + path[len(host):]
        raise OliveSystemsError(f"system '{self.name}': {path} is outside every mount", "keep models in the cache or input folder")

    def run_job(self, job_path: Path, timeout_s: float, on_log) -> dict:
        # The runner rewrites the job's host paths to where this container mounted them (--map).
        maps = [arg for host, inside in self.mounts.items() for arg in ("--map", f"{host}={inside}")]
        api = self.container.client.api
        started = time.perf_counter()
        exec_id = api.exec_create(self.container.id, ["timeout", "-k", "5", str(max(1, int(timeout_s))), "python", "-m",
                                                      "olive_systems.runner", *maps, self.inside(str(job_path))])["Id"]
        tail: list[str] = []
        pending = ""
        for chunk in api.exec_start(exec_id, stream=True):
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                tail.append(line)
                on_log(line)
        exit_code = api.exec_inspect(exec_id)["ExitCode"]
        self.container.reload()
        if self.container.status != "running":  # an OOM kill can take the container: the next job gets a new one
            self.container.remove(force=True)
            self._launch()
        return read_result(job_path, tail[-40:], time.perf_counter() - started, exit_code, timeout_s,
                           self.config.get("memory_limit", "8g"))

    def stop(self) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except Exception:  # already gone; nothing is left to clean
                pass
            self.container = None
