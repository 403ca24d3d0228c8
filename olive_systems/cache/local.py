"""Local content-addressed cache: one folder per entry, keyed by a full sha256.

An entry is built in a private temp folder, its manifest (file sizes and sha256s) written last,
and then the folder is renamed into place in one atomic step. A run killed at any moment leaves
at most a temp folder, which no reader looks at. Every read checks the files against the manifest;
a corrupt entry is reported, removed and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..concurrency import remove_stale_lock
from ..models import file_sha256, folder_files

MANIFEST = "manifest.json"
KINDS = ("runs", "evaluations")


def make_key(parts: dict) -> str:
    """Full sha256 of the canonical JSON of everything that determines a result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Entry:
    kind: str
    key: str
    path: Path
    meta: dict
    source: str = "local"  # local, shared (pulled from the blob cache) or computed
    pending: tuple | None = None  # (manifest, etag) of a shared entry whose files are not here yet


class LocalCache:
    def __init__(self, root: Path, warn: Callable[[str], None] = print, remote=None):
        self.root = Path(root).resolve()  # absolute: paths in jobs must mean the same in every system
        self.warn = warn
        self.remote = remote  # a BlobRemote in front of which this cache sits, or None
        self._remote_warned = threading.Lock()  # taken once, by the one warning that the remote is down

    def entry_path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def get(self, kind: str, key: str) -> Entry | None:
        entry = self._get_local(kind, key)
        if entry is None and self._remote_up():
            entry = self._pull(kind, key)
        return entry

    def _get_local(self, kind: str, key: str) -> Entry | None:
        path = self.entry_path(kind, key)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            problem = _verify(path, manifest["files"])
        except (OSError, ValueError, KeyError) as exc:
            problem = f"unreadable manifest ({exc})"
        if problem:
            self.warn(f"cache entry {kind}/{key[:12]} is corrupt ({problem}); removed, recomputing")
            self.discard(path)
            return None
        return Entry(kind, key, path, manifest["meta"])

    def put(self, kind: str, key: str, build: Callable[[Path], dict]) -> Entry:
        """build(folder) fills a fresh folder and returns the entry's metadata."""
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{key[:12]}-", dir=tmp_root))
        try:
            meta = build(tmp)
            files = {p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
                     for p in folder_files(tmp)}
            manifest = {"key": key, "kind": kind, "created": time.time(), "files": files, "meta": meta}
            _write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1))
            final = self.entry_path(kind, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:  # another writer got there first: theirs stands, ours goes
                shutil.rmtree(tmp, ignore_errors=True)
                theirs = self._get_local(kind, key)
                if theirs is None:
                    return self.put(kind, key, build)
                theirs.source = "computed"  # we did compute it (twice in all): say so
                return theirs
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._push(kind, key, final, manifest)
        return Entry(kind, key, final, meta, source="computed")

    # ---- the shared (blob) cache behind this one ----

    def _remote_up(self) -> bool:
        return self.remote is not None and self.remote.down is None

    def _remote_call(self, work):
        """The remote's breaker opens at its first failure; this says so once, however many threads
        hit it, and the run goes on with the local cache alone."""
        from .blob import RemoteUnavailable

        try:
            return work()
        except RemoteUnavailable as exc:
            if self._remote_warned.acquire(blocking=False):
                self.warn(f"shared cache {self.remote.name} unavailable ({exc}); going on with the local cache only")
            return None

    def _pull(self, kind: str, key: str) -> Entry | None:
        """Only the manifest: its metadata is enough to go on (the next pass's key needs just the
        model's hash), and the files come when something needs them (materialize)."""
        found = self._remote_call(lambda: self.remote.manifest(kind, key))
        if found is None:
            return None
        return Entry(kind, key, self.entry_path(kind, key), found[0]["meta"], source="shared", pending=found)

    def materialize(self, entry: Entry) -> bool:
        """Download a shared entry's files, verified, into place. False (and a warning) when the shared
        entry is corrupt or the service went away: the caller recomputes."""
        from .blob import CorruptRemoteEntry

        if entry.pending is None or self._get_local(entry.kind, entry.key) is not None:
            entry.pending = None
            return True
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-pull-", dir=tmp_root))
        try:
            manifest, etag = entry.pending
            if not self._remote_up() or self._remote_call(lambda: self.remote.download(entry.kind, entry.key, manifest, etag, tmp)) is None:
                return False
            _write_atomic(tmp / MANIFEST, json.dumps({k: v for k, v in manifest.items() if k != "writer"}, indent=1))
            entry.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, entry.path)
            except OSError:  # pulled by someone else meanwhile
                pass
            entry.pending = None
            return True
        except CorruptRemoteEntry as exc:
            self.warn(f"shared cache entry {entry.kind}/{entry.key[:12]} is corrupt ({exc}); not used, recomputing")
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _push(self, kind: str, key: str, folder: Path, manifest: dict) -> None:
        if self._remote_up():
            self._remote_call(lambda: self.remote.push(kind, key, folder, manifest))

    def push_entry(self, entry: Entry) -> bool:
        """Publish an entry that is only local (cache push)."""
        manifest = json.loads((entry.path / MANIFEST).read_text())
        return bool(self._remote_up() and self._remote_call(lambda: self.remote.push(entry.kind, entry.key, entry.path, manifest)))

    def entries(self, kind: str) -> list[Entry]:
        found = []
        for manifest_path in sorted((self.root / kind).glob(f"*/*/{MANIFEST}")):
            manifest = json.loads(manifest_path.read_text())
            found.append(Entry(kind, manifest["key"], manifest_path.parent, manifest["meta"]))
        return found

    def sweep(self) -> list[Path]:
        """Remove what runs that were killed left behind: temp and job folders (their process is gone)
        and the lock files of steps they were computing (nobody holds them). Returns what it removed."""
        removed = []
        for folder in [*(self.root / "tmp").glob("*-*"), *(self.root / "jobs").glob("*-*")]:
            pid = folder.name.split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        removed += [lock for lock in (self.root / "locks").glob("*.lock") if remove_stale_lock(lock)]
        return removed

    def prune_orphans(self) -> list[str]:
        """`cache prune`: what sweep removes, entry folders without a manifest (no complete entry), and
        with a shared cache its orphan blobs. Returns what went."""
        removed = [str(path) for path in self.sweep()]
        for trash in (self.root / "tmp").glob("trash-*"):  # a discard killed half-way
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(str(trash))
        for kind in KINDS:
            for folder in (self.root / kind).glob("*/*"):
                if folder.is_dir() and not (folder / MANIFEST).is_file():
                    self.discard(folder)
                    removed.append(str(folder))
        if self._remote_up():
            removed += self._remote_call(self.remote.prune_orphans) or []
        return removed

    def clear(self) -> None:
        for kind in (*KINDS, "tmp", "jobs"):
            shutil.rmtree(self.root / kind, ignore_errors=True)

    def discard(self, path: Path) -> None:
        # Rename first so no reader sees a half-deleted entry.
        trash = self.root / "tmp" / f"trash-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _verify(path: Path, files: dict) -> str | None:
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} missing"
        if file.stat().st_size != expected["size"] or file_sha256(file) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
