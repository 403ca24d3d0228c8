"""Who owns a docker system's container, and removing the ones whose run is gone.

Every container carries labels naming its run (a fresh id per system start) and its owner: the
host, the uid and user name, the pid and that process's start time, so a reused pid is not taken
for the owner. A container whose owner process is gone from this host is an orphan; the next start
of a docker system and `olive-systems systems prune` remove it. Containers started on other hosts
(a shared DOCKER_HOST) are left alone: their owners cannot be checked from here.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..cache.local import process_alive

LABEL_SYSTEM = "olive-systems"  # value: the system's name in the recipe
LABEL_RUN = "olive-systems.run"
LABEL_HOST = "olive-systems.owner.host"
LABEL_UID = "olive-systems.owner.uid"
LABEL_USER = "olive-systems.owner.user"
LABEL_PID = "olive-systems.owner.pid"
LABEL_STARTED = "olive-systems.owner.started"  # the owner's start time in clock ticks after boot (Linux)


def new_run_id() -> str:
    return uuid.uuid4().hex


def process_started(pid: int) -> str:
    """The start time of process `pid` from /proc (field 22 of stat); "" where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def owner_labels(system_name: str, run_id: str) -> dict[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (common in containers)
        user = ""
    uid = os.getuid() if hasattr(os, "getuid") else -1
    return {LABEL_SYSTEM: system_name, LABEL_RUN: run_id, LABEL_HOST: socket.gethostname(), LABEL_UID: str(uid),
            LABEL_USER: user, LABEL_PID: str(os.getpid()), LABEL_STARTED: process_started(os.getpid())}


def owner_alive(labels: dict) -> bool:
    """Whether the process that started a container (on this host) still runs."""
    try:
        pid = int(labels[LABEL_PID])
    except ValueError:  # not a pid: nothing says its owner is gone
        return True
    if not process_alive(pid):
        return False
    started = labels.get(LABEL_STARTED, "")
    now = process_started(pid)
    return not started or not now or started == now  # a different start time: the pid was reused


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)  # "name (run ..., pid ... of user@host)"
    other_hosts: list[str] = field(default_factory=list)
    unowned: list[str] = field(default_factory=list)  # no owner labels: from an older olive-systems


def describe(container) -> str:
    labels = container.labels
    if LABEL_PID not in labels:
        return f"{container.name} (system '{labels.get(LABEL_SYSTEM, '')}', no owner label)"
    return (f"{container.name} (system '{labels.get(LABEL_SYSTEM, '')}', run {labels.get(LABEL_RUN, '')[:12]}, "
            f"pid {labels[LABEL_PID]} of {labels.get(LABEL_USER) or 'uid ' + labels.get(LABEL_UID, '?')}"
            f"@{labels.get(LABEL_HOST, '?')})")


def prune_containers(client, everything: bool = False) -> PruneReport:
    """Removes the containers whose run is gone (everything=True: every olive-systems container)."""
    import docker

    report = PruneReport()
    host = socket.gethostname()
    for container in client.containers.list(all=True, filters={"label": LABEL_SYSTEM}, ignore_removed=True):
        labels = container.labels
        if not everything:
            if LABEL_PID not in labels or LABEL_HOST not in labels:
                report.unowned.append(describe(container))
                continue
            if labels[LABEL_HOST] != host:
                report.other_hosts.append(describe(container))
                continue
            if owner_alive(labels):
                continue
        try:
            container.remove(force=True)
        except docker.errors.NotFound:  # removed meanwhile (by its owner, the daemon, another prune)
            continue
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: a removal is already in progress
                raise
        report.removed.append(describe(container))
    return report


def prune_lines(everything: bool = False) -> list[str]:
    """`olive-systems systems prune`: what was removed, and what was left and why."""
    from .docker import docker_client

    report = prune_containers(docker_client(), everything)
    lines = [f"removed {len(report.removed)} container(s) whose run is gone" if not everything
             else f"removed {len(report.removed)} olive-systems container(s)"]
    lines += [f"  {item}" for item in report.removed]
    if report.other_hosts:
        lines.append(f"left {len(report.other_hosts)} started on other hosts (prune there, or use --all):")
        lines += [f"  {item}" for item in report.other_hosts]
    if report.unowned:
        lines.append(f"left {len(report.unowned)} without an owner label, from an older olive-systems (remove with --all):")
        lines += [f"  {item}" for item in report.unowned]
    return lines
