"""The uid:gid a docker system's jobs run as, and what that uid may read and write.

Jobs never run as root. A non-root host user's jobs run as that user's uid:gid, so everything a job
writes is the user's own. Under root they run as `user` (default 65532:65532, "nonroot"): each
job's folder is handed to that uid for the job and back to root after it, and the cache entries a
job reads are made readable to others (o+rX; the cache is root's, and its folders are 0755 under a
usual umask anyway). The input model folder is the user's: it must already be readable to others.
Links are never followed, so a job cannot turn the hand-back into a chown of a file elsewhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import OliveSystemsError

ROOT_HOST_DEFAULT = (65532, 65532)


def host_ids() -> tuple[int, int]:
    return (os.getuid(), os.getgid()) if hasattr(os, "getuid") else (1000, 1000)


def job_ids(config: dict, system_name: str) -> tuple[int, int]:
    """uid, gid of the jobs: `user` ("uid" or "uid:gid") when given, else the host user's, else 65532."""
    host = host_ids()
    wanted = config.get("user")
    if wanted is None:
        return ROOT_HOST_DEFAULT if host[0] == 0 else host
    uid, _, gid = str(wanted).partition(":")
    ids = (int(uid), int(gid or uid))
    if ids[0] == 0:
        raise OliveSystemsError(f"system '{system_name}': user {wanted} would run jobs as root",
                                f"set systems.{system_name}.user to a non-root uid:gid, e.g. 65532:65532, or leave it out")
    if host[0] != 0 and ids != host:
        raise OliveSystemsError(
            f"system '{system_name}': user {wanted} differs from yours ({host[0]}:{host[1]}); only root can hand a "
            "job's folder to another uid", f"leave systems.{system_name}.user out (jobs then run as you), or run as root")
    return ids


def chown_tree(root: Path, uid: int, gid: int, root_last: bool) -> None:
    """Hands a job folder over (root_last: the job uid gets in only once all is its) or back (the
    folder first, so it is shut). fwalk goes by folder handles and never follows a link, so a job
    swapping a folder for a link mid-walk cannot point the chown at a file elsewhere."""
    if not root_last:
        os.lchown(root, uid, gid)
    for _, dirs, files, folder_fd in os.fwalk(root, topdown=False, follow_symlinks=False):
        for name in dirs + files:
            try:
                os.chown(name, uid, gid, dir_fd=folder_fd, follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile
                pass
    if root_last:
        os.lchown(root, uid, gid)


def grant_read(path: Path, top: Path) -> None:
    """o+x on the folders from `top` down to `path`, o+rX on `path` and everything under it."""
    path, top = Path(path), Path(top)
    if not path.exists() or path.is_symlink():
        return
    for folder in [top, *reversed([p for p in path.parents if p.is_relative_to(top) and p != top])]:
        _add_mode(folder, stat.S_IXOTH)
    targets = [path] if not path.is_dir() else [path, *(Path(d) / n for d, ds, fs in os.walk(path) for n in ds + fs)]
    for target in targets:
        _add_mode(target, stat.S_IROTH | (stat.S_IXOTH if target.is_dir() else 0))


def allow_traverse(folder: Path) -> None:
    _add_mode(folder, stat.S_IXOTH)


def _add_mode(path: Path, bits: int) -> None:
    mode = os.lstat(path).st_mode
    if not stat.S_ISLNK(mode) and mode & bits != bits:
        os.chmod(path, stat.S_IMODE(mode) | bits)


def unreadable_to_others(root: Path) -> Path | None:
    """The first file or folder under `root` that a uid other than its owner and group cannot read.
    Hidden files and __pycache__ are passed over: no job needs them (Python recompiles without)."""
    def visible(folder: str, names: list[str]) -> list[str]:
        names[:] = [n for n in names if not n.startswith(".") and n != "__pycache__"]  # also prunes os.walk
        return names

    for path in [root, *(Path(d) / n for d, ds, fs in os.walk(root) for n in visible(d, ds) + visible(d, fs))]:
        mode = os.lstat(path).st_mode
        needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        if not stat.S_ISLNK(mode) and mode & needed != needed:
            return path
    return None


def strings_under(value, prefix: str) -> list[str]:
    """Every string in a JSON document that is `prefix` or a path below it."""
    if isinstance(value, str):
        return [value] if value == prefix or value.startswith(prefix.rstrip("/") + "/") else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_under(v, prefix)]
    if isinstance(value, list):
        return [s for v in value for s in strings_under(v, prefix)]
    return []
