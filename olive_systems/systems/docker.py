"""DockerSystem: jobs run in one warm container per workflow, from a per-accelerator image.

The container starts once (`--init`, `--network none`) with the cache and the input model mounted
read-only and the jobs folder as the one writable mount; each job is a `docker exec` of the runner
under `timeout`. The host's olive_systems source is mounted too, so the container runs exactly the
host's code. Jobs cannot escape it: a non-root uid (docker_user.py), a read-only root file system
with a tmpfs for /tmp (HOME), every capability dropped, no-new-privileges, and limits on memory,
CPUs and processes (all in the system config; DEFAULTS below).

Nor can the container outlive its run. It is removed at the end of the run, Ctrl-C included; its
main process reads a stdin that this process holds open (attached with StdinOnce), so when this
process dies, SIGKILL included, the daemon closes that stdin, the container exits and is
auto-removed. Its labels name its run and owner (docker_owner.py), and the next start of a docker
system (or `olive-systems systems prune`) removes any container whose owner is gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from ..errors import OliveSystemsError
from ..job import KILLED_EXIT_CODES, read_result
from .docker_owner import new_run_id, owner_labels, prune_containers
from .docker_user import allow_traverse, chown_tree, grant_read, host_ids, job_ids, strings_under, unreadable_to_others
from .venv import SOURCE_ROOT

log = logging.getLogger(__name__)
PROVIDERS_PROBE = "import json, onnxruntime as o; print(json.dumps(o.get_available_providers()))"
DAEMON_FIX = "start the Docker daemon (sudo systemctl start docker, or sudo dockerd &) or set DOCKER_HOST"
# Defaults of the container settings in a DockerSystem config; `cpus` defaults to every CPU of the
# daemon's machine (a smaller share throttles jobs, and latencies measured under it show that).
DEFAULTS = {"memory_limit": "8g", "pids_limit": 4096, "read_only": True, "tmpfs_size": "2g", "cap_add": [],
            "no_new_privileges": True}
# The main process: it ends when its stdin closes, that is when the process that started it is gone.
TETHER = ["sh", "-c", "cat >/dev/null"]


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


# The memory cgroup's OOM-kill counter, as a container sees it: cgroup v2, then v1.
OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kills(container) -> int | None:
    """How many processes the container's memory cgroup has OOM-killed (None: no counter readable)."""
    for path in OOM_COUNTERS:
        try:
            code, out = container.exec_run(["cat", path])
        except Exception:  # noqa: BLE001 - the container went away: nothing to read
            return None
        if code == 0:
            for line in out.decode(errors="replace").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
    return None


class DockerSystem:
    can_run_torch = False

    def __init__(self, config: dict, name: str = "docker_system"):
        self.config, self.name = config, name
        self.settings = {**DEFAULTS, **{k: config[k] for k in DEFAULTS if k in config}}
        self.user = job_ids(config, name)  # a root uid or another user's uid is refused before any work
        self.handover = self.user != host_ids()  # under root: job folders are handed to the job uid and back
        self.container = None
        self._tether = None
        self._relaunch = threading.Lock()
        self._oom_seen: dict[str, int] = {}  # container id -> its memory cgroup's OOM kills already accounted for
        self.run_id = None
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
        pruned = prune_containers(self.client)  # containers of runs that died (SIGKILL, power loss) go first
        if pruned.removed:
            log.warning("removed %d container(s) left by runs that are gone: %s", len(pruned.removed), "; ".join(pruned.removed))
        try:
            self.client.images.get(self.tag)
        except docker.errors.ImageNotFound:
            image = self.config.get("image", "cpu")
            raise OliveSystemsError(f"system '{self.name}': image {self.tag} is not built",
                                    f"make images (or python -m olive_systems.images build {image})") from None
        self.cpus = float(self.config.get("cpus") or self.client.info()["NCPU"])
        self.mounts = {str(Path(mounts["cache"])): "/olive/cache", str(Path(mounts["input"])): "/olive/input",
                       str(Path(mounts["jobs"])): "/olive/jobs", str(SOURCE_ROOT / "olive_systems"): "/olive/src/olive_systems"}
        if self.handover:
            self._check_readable(SOURCE_ROOT / "olive_systems", "the olive_systems source")
            allow_traverse(Path(mounts["jobs"]))  # the job uid reaches its own folder, and no other
        self.run_id = new_run_id()
        self._launch()

    def _check_readable(self, root: Path, what: str) -> None:
        blocked = unreadable_to_others(root)
        if blocked is not None:
            raise OliveSystemsError(
                f"system '{self.name}': jobs run as uid {self.user[0]}, which cannot read {blocked} ({what})",
                f"chmod -R o+rX {root}, or run olive-systems as a non-root user (jobs then run as that user)")

    def container_settings(self) -> dict:
        """The keyword arguments of containers.run that confine a job: who, what it may touch, how much."""
        settings = self.settings
        return {
            "user": f"{self.user[0]}:{self.user[1]}", "read_only": settings["read_only"],
            "tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={settings['tmpfs_size']},mode=1777"},
            "cap_drop": ["ALL"], "cap_add": list(settings["cap_add"]) or None,
            "security_opt": ["no-new-privileges"] if settings["no_new_privileges"] else None,
            "mem_limit": settings["memory_limit"], "pids_limit": int(settings["pids_limit"]),
            "nano_cpus": int(self.cpus * 1e9),
        }

    def _launch(self) -> None:
        import docker

        volumes = {host: {"bind": inside, "mode": "rw" if inside == "/olive/jobs" else "ro"} for host, inside in self.mounts.items()}
        gpus = any(acc.get("device") == "gpu" for acc in self.config.get("accelerators", []))
        try:
            container = self.client.containers.create(
                self.tag, TETHER, stdin_open=True, auto_remove=True, init=True, network_mode="none",
                device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None,
                volumes=volumes, working_dir="/tmp", labels=owner_labels(self.name, self.run_id),
                environment={"PYTHONPATH": "/olive/src", "HOME": "/tmp", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
                **self.container_settings(),
            )
        except docker.errors.APIError as exc:  # e.g. cpus above the machine's, an unknown capability
            raise OliveSystemsError(f"system '{self.name}': docker refused the container settings: {exc.explanation or exc}",
                                    f"fix systems.{self.name} (memory_limit, cpus, pids_limit, cap_add, user)") from None
        # Attached before the start: the container never runs untethered (one created but never
        # started, should this process die right here, is pruned by the next start).
        self._tether = self.client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
        self.container = container
        container.start()

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
        job_dir = Path(job_path).parent
        if self.handover:
            self._hand_over(job_path)
        try:
            return self._exec_job(job_path, timeout_s, on_log)
        finally:
            if self.handover:  # everything the job wrote becomes the host user's again
                chown_tree(job_dir, *host_ids(), root_last=False)

    def _hand_over(self, job_path: Path) -> None:
        """The job folder to the job uid; the cache entries the job names readable to it. The input
        model is the user's: its permissions are checked, not changed."""
        host = {inside: host for host, inside in self.mounts.items()}
        job = json.loads(Path(job_path).read_text())
        jobs = set(strings_under(job, host["/olive/jobs"]))  # the jobs folder lies in the cache folder
        for path in set(strings_under(job, host["/olive/cache"])) - jobs:
            grant_read(Path(path), Path(host["/olive/cache"]))
        if strings_under(job, host["/olive/input"]):
            self._check_readable(Path(host["/olive/input"]), "the input model")
        chown_tree(Path(job_path).parent, *self.user, root_last=True)

    def _exec_job(self, job_path: Path, timeout_s: float, on_log) -> dict:
        import docker

        # The runner rewrites the job's host paths to where this container mounted them (--map).
        maps = [arg for host, inside in self.mounts.items() for arg in ("--map", f"{host}={inside}")]
        container = self.container
        api = container.client.api
        started = time.perf_counter()
        exec_id = api.exec_create(container.id, ["timeout", "-k", "5", str(max(1, int(timeout_s))), "python", "-m",
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
        try:
            container.reload()
            running = container.status == "running"
        except docker.errors.NotFound:  # exited and auto-removed
            running = False
        oom_killed = self._oom_killed(container, running) if exit_code in KILLED_EXIT_CODES else None
        if not running:  # an OOM kill can take the container: the next job gets a new one
            with self._relaunch:
                if self.container is container:  # not stopped, nor relaunched by another job meanwhile
                    self._discard(container)
                    self._launch()
        return read_result(job_path, tail[-40:], time.perf_counter() - started, exit_code, timeout_s,
                           self.settings["memory_limit"], oom_killed)

    def _oom_killed(self, container, running: bool) -> bool | None:
        """True when the container's memory cgroup OOM-killed a process since the last look (the kill
        is then certain, not a guess from the exit code); None when that cannot be told."""
        if not running:  # the container itself died: docker kept the verdict, if it kept the container
            return True if (container.attrs.get("State") or {}).get("OOMKilled") else None
        kills = oom_kills(container)
        if kills is None:
            return None
        seen, self._oom_seen[container.id] = self._oom_seen.get(container.id, 0), kills
        return True if kills > seen else None

    def _discard(self, container) -> None:
        try:
            container.remove(force=True)
        except Exception:  # already gone; nothing is left to clean
            pass
        if self._tether is not None:
            try:
                self._tether.close()
            except OSError:
                pass
            self._tether = None

    def stop(self) -> None:
        with self._relaunch:
            if self.container is not None:
                self._discard(self.container)
                self.container = None
