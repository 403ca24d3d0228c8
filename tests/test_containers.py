"""The docker system's container, for real: jobs run confined (non-root uid, read-only root file
system, no capabilities, no-new-privileges, pids, CPU and memory limits) and still succeed; the
container dies with its run, SIGKILL included; containers whose run is gone are removed at the next
start and by `olive-systems systems prune`. Needs a Docker daemon and the cpu image (make images-cpu);
without them every test here skips and says why (CI=true: fails)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import olive_systems
from olive_systems.errors import OliveSystemsError

from test_systems import FAULTY_SCRIPT, need_docker, system_recipe, tiny_onnx  # noqa: F401 (tiny_onnx: a fixture)

ROOT = os.getuid() == 0
EXPECTED_USER = "65532:65532" if ROOT else f"{os.getuid()}:{os.getgid()}"


def wait_for(predicate, seconds: float = 60.0):
    """The predicate's first truthy value, polled; None when `seconds` pass without one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    return None


def containers_client():
    from olive_systems.systems.docker import docker_client

    return docker_client()


def containers(**labels):
    filters = {"label": [f"{key}={value}" for key, value in labels.items()] or ["olive-systems"]}
    return containers_client().containers.list(all=True, filters=filters, ignore_removed=True)


def docker_recipe(model: Path, tmp_path: Path, **system) -> dict:
    """One pass (dynamic INT8) of the tiny BERT and its evaluation (latency, fidelity) in the cpu image."""
    recipe = system_recipe(model, tmp_path, {"type": "DockerSystem", "image": "cpu", **system}, flows=[["dynamic"]])
    metrics = recipe["evaluators"]["common"]["metrics"]
    recipe["evaluators"]["common"]["metrics"] = [m for m in metrics if m["name"] in ("latency", "fidelity")]
    return recipe


def owned_by_someone_else(path: Path) -> list[Path]:
    return [p for p in [path, *path.rglob("*")] if p.lstat().st_uid != os.getuid()]


# ---- confinement ----

def test_a_job_runs_confined_and_succeeds(tiny_onnx, tmp_path, monkeypatch):
    """A real pass and evaluation of the tiny BERT in the cpu image under the default settings; the
    container is inspected from the first job, and its limits are felt from inside."""
    need_docker()
    from olive_systems.systems.docker import DockerSystem

    seen = {}
    original = DockerSystem._exec_job

    def inspect_first(self, job_path, timeout_s, on_log):
        if not seen:
            seen["run"] = self.run_id
            seen["attrs"] = self.client.api.inspect_container(self.container.id)
            probe = "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; touch /probe 2>&1; touch /tmp/probe && echo tmp-ok"
            seen["probe"] = self.container.exec_run(["sh", "-c", probe]).output.decode()
        return original(self, job_path, timeout_s, on_log)

    monkeypatch.setattr(DockerSystem, "_exec_job", inspect_first)
    output = olive_systems.run(docker_recipe(tiny_onnx, tmp_path))

    assert not output.failures, output.failures
    assert [m.model_id for m in output.get_output_models()] == ["dynamic"]
    host, config = seen["attrs"]["HostConfig"], seen["attrs"]["Config"]
    assert config["User"] == EXPECTED_USER and not config["User"].startswith("0")
    assert host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 4096
    assert host["NanoCpus"] == containers_client().info()["NCPU"] * 10**9  # the default: every CPU of the daemon's host
    assert host["Memory"] == 8 * 1024**3
    assert host["NetworkMode"] == "none"
    uid, caps, no_new_privs, rootfs, tmp = seen["probe"].strip().splitlines()
    assert uid == EXPECTED_USER.split(":")[0]
    assert caps.split()[1] == "0000000000000000" and no_new_privs.split()[1] == "1"
    assert "Read-only file system" in rootfs and tmp == "tmp-ok"
    # what the jobs wrote (the quantized model, its cache entry, the jobs folder) is the host user's
    assert owned_by_someone_else(tmp_path / "cache") == [] and owned_by_someone_else(tmp_path / "out") == []
    assert containers(**{"olive-systems.run": seen["run"]}) == [], "the run's container is removed at its end"


def test_every_setting_is_configurable(tiny_onnx, tmp_path):
    need_docker()
    from olive_systems.systems.docker import DockerSystem

    config = {"type": "DockerSystem", "image": "cpu", "cpus": 1.5, "pids_limit": 256, "memory_limit": "2g",
              "tmpfs_size": "64m", "cap_add": ["SYS_NICE"], "no_new_privileges": False, "read_only": False}
    if ROOT:
        config["user"] = "4242:4343"
    system = DockerSystem(config, "configured")
    (tmp_path / "jobs").mkdir()
    system.start({"cache": tmp_path, "jobs": tmp_path / "jobs", "input": tiny_onnx})
    try:
        attrs = system.client.api.inspect_container(system.container.id)
        host = attrs["HostConfig"]
        assert (host["NanoCpus"], host["PidsLimit"], host["Memory"]) == (1_500_000_000, 256, 2 * 1024**3)
        assert "size=64m" in host["Tmpfs"]["/tmp"] and host["ReadonlyRootfs"] is False
        assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["SYS_NICE"] and not host["SecurityOpt"]
        assert attrs["Config"]["User"] == ("4242:4343" if ROOT else EXPECTED_USER)
        assert attrs["Config"]["Labels"]["olive-systems.run"] == system.run_id
    finally:
        system.stop()
    assert containers(**{"olive-systems.run": system.run_id}) == []


def test_jobs_never_run_as_root(tiny_onnx, tmp_path):
    """user: "0" is refused before any work, with the fix."""
    recipe = docker_recipe(tiny_onnx, tmp_path, user="0:0")
    with pytest.raises(OliveSystemsError, match="would run jobs as root") as info:
        olive_systems.run(recipe)
    assert "non-root uid:gid" in info.value.fix
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "runs").exists()


def test_jobs_run_as_you_and_another_uid_needs_root(monkeypatch):
    """A non-root user's jobs run as that user's uid:gid; naming another uid is refused before any work."""
    from olive_systems.systems import docker_user
    from olive_systems.systems.docker import DockerSystem

    if ROOT:  # the only stand-in here: this host's interpreter sits under /root, out of other uids' reach
        monkeypatch.setattr(docker_user, "host_ids", lambda: (1000, 1000))
    me = docker_user.host_ids()
    assert DockerSystem({"type": "DockerSystem"}, "mine").user == me
    with pytest.raises(OliveSystemsError, match="only root can hand a job's folder to another uid") as info:
        DockerSystem({"type": "DockerSystem", "user": f"{me[0] + 1}:{me[1]}"}, "other")
    assert "leave systems.other.user out" in info.value.fix


@pytest.mark.skipif(not ROOT, reason="as a non-root user the jobs run as you, who can read your own input")
def test_an_input_the_job_uid_cannot_read_fails_with_the_chmod(tiny_onnx, tmp_path):
    need_docker()
    import shutil

    private = tmp_path / "private_model"
    shutil.copytree(tiny_onnx, private)
    private.chmod(0o700)
    recipe = docker_recipe(private, tmp_path)
    recipe["engine"]["evaluate_input_model"] = False
    output = olive_systems.run(recipe)
    assert output.failures and f"cannot read {private}" in output.failures[0]["error"], output.failures
    assert f"chmod -R o+rX {private}" in json.dumps(output.failures[0])
    assert oct(private.stat().st_mode & 0o777) == "0o700", "the user's folder is not changed behind their back"


# ---- the container cannot outlive its run ----

def test_a_run_killed_with_sigkill_leaves_no_container(tiny_onnx, tmp_path):
    need_docker()
    (tmp_path / "faulty.py").write_text(FAULTY_SCRIPT)
    recipe = docker_recipe(tiny_onnx, tmp_path, timeout_s=600)
    recipe["evaluators"] = {"slow": {"metrics": [{"name": "slow", "type": "custom", "data_config": "pairs", "sub_types": [{"name": "x"}],
                                                  "user_config": {"user_script": str(tmp_path / "faulty.py"), "metric_func": "hang"}}]}}
    recipe["engine"]["evaluator"] = "slow"
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    console = tmp_path / "console.txt"  # a file, not a pipe: a full pipe would stall the run
    run = subprocess.Popen([sys.executable, "-m", "olive_systems", "run", "--config", str(tmp_path / "recipe.json")],
                           env=env, stdout=console.open("w"), stderr=subprocess.STDOUT)
    try:
        def hanging_job():
            for container in containers(**{"olive-systems.owner.pid": run.pid}):
                if container.status == "running" and "olive_systems.runner" in json.dumps(container.top()):
                    return container
            assert run.poll() is None, f"the run ended early: {console.read_text()[-2000:]}"
            return None

        container = wait_for(hanging_job, 300)
        assert container is not None, "the run never got to its hanging job"
        labels = container.labels
        assert labels["olive-systems.owner.host"] == socket.gethostname() and labels["olive-systems.owner.uid"] == str(os.getuid())
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    run_label = {"olive-systems.run": labels["olive-systems.run"]}
    assert wait_for(lambda: containers(**run_label) == [], 60), "the container outlived its SIGKILLed run"
    from olive_systems.systems.docker_owner import prune_lines

    run_id = labels["olive-systems.run"]
    assert not [line for line in prune_lines() if run_id[:12] in line], "a prune after it finds nothing of that run left"
    assert containers(**run_label) == []


@pytest.fixture
def labelled_container():
    """Starts a bare container (no tether: as an older olive-systems or a restarted daemon leaves
    them) carrying the owner labels given; removes whatever is left at the end."""
    from olive_systems.images import image_tag
    from olive_systems.systems.docker import docker_client
    from olive_systems.systems.docker_owner import new_run_id, owner_labels

    client, made = docker_client(), []

    def start(**overrides):
        labels = {**owner_labels("orphan-test", new_run_id()), **overrides}
        container = client.containers.run(image_tag("cpu"), ["sleep", "infinity"], detach=True, init=True,
                                          network_mode="none", labels=labels, user="65532:65532")
        made.append(container)
        return container

    yield start
    for container in made:
        try:
            container.remove(force=True)
        except Exception:  # already reaped, as the test wanted
            pass


def gone(container) -> bool:
    return containers(**{"olive-systems.run": container.labels["olive-systems.run"]}) == []


def test_containers_whose_run_is_gone_are_reaped_at_the_next_start_and_by_prune(tiny_onnx, tmp_path, labelled_container,
                                                                               capsys):
    need_docker()
    from olive_systems.cli import main
    from olive_systems.systems.docker import DockerSystem

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    orphan = labelled_container(**{"olive-systems.owner.pid": str(finished.pid), "olive-systems.owner.started": "1"})
    reused_pid = labelled_container(**{"olive-systems.owner.started": "1"})  # our pid, but another process's start time
    alive = labelled_container()  # this process: its run is going on
    elsewhere = labelled_container(**{"olive-systems.owner.host": "another-host.invalid",
                                      "olive-systems.owner.pid": str(finished.pid)})

    (tmp_path / "jobs").mkdir()
    system = DockerSystem({"type": "DockerSystem", "image": "cpu"}, "next-run")
    system.start({"cache": tmp_path, "jobs": tmp_path / "jobs", "input": tiny_onnx})
    system.stop()
    assert gone(orphan) and gone(reused_pid), "the next start removes containers whose owner is gone"
    assert not gone(alive) and not gone(elsewhere), "a live run's container and another host's stay"

    second = labelled_container(**{"olive-systems.owner.pid": str(finished.pid), "olive-systems.owner.started": "1"})
    capsys.readouterr()
    assert main(["systems", "prune"]) == 0
    assert gone(second) and not gone(alive) and not gone(elsewhere)
    printed = capsys.readouterr().out
    assert second.name in printed and f"pid {finished.pid}" in printed
    assert "started on other hosts" in printed and elsewhere.name in printed


def test_settings_docker_refuses_are_one_clear_error(tiny_onnx, tmp_path):
    need_docker()
    from olive_systems.systems.docker import DockerSystem

    system = DockerSystem({"type": "DockerSystem", "image": "cpu", "cpus": 100000}, "greedy")
    (tmp_path / "jobs").mkdir()
    try:
        with pytest.raises(OliveSystemsError, match="docker refused the container settings: .*CPU") as info:
            system.start({"cache": tmp_path, "jobs": tmp_path / "jobs", "input": tiny_onnx})
        assert "systems.greedy" in info.value.fix
    finally:
        system.stop()
    assert containers(**{"olive-systems.run": system.run_id}) == []
