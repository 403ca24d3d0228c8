"""The shared cache: Azure Blob Storage behind the local cache, so a team or a CI matrix computes
each pass once.

Layout in the container, for an entry of `kind` (runs, evaluations) and full sha256 `key`:
    <kind>/<key>/<writer>.tar        the entry's files in one uncompressed tar (one request, not dozens),
                                     under a name unique to the writer
    <kind>/<key>/manifest.json       written last, only if absent: the first writer wins
A reader uses an entry only through its manifest and checks every file against the sha256 there;
a killed upload leaves a tar no manifest names, which nobody reads. Credentials come from an
environment variable holding a connection string, or from DefaultAzureCredential; never from a
recipe, never logged.

An outage costs seconds, not minutes: with the SDK's defaults (exponential retries backing off from
15 s, a 20 s connect and a 60 s read timeout) one call to a stopped service took 87 s
(benchmarks/shared_cache.py sdk-defaults). Here a connection or read failure is not retried, timeouts are short, and the first failure marks the
service down for the rest of the run (a circuit breaker): later calls fail at once, never on the wire.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from ..errors import OliveSystemsError

DEFAULT_CONNECTION_ENV = "AZURE_STORAGE_CONNECTION_STRING"
CONNECT_TIMEOUT_S = 3  # a reachable service answers a connect in milliseconds
READ_TIMEOUT_S = 20  # per socket read, not per transfer: large blobs still stream
ORPHAN_GRACE_S = 3600  # prune keeps blobs of an entry without a manifest this long: an upload may be under way


class RemoteUnavailable(Exception):
    """The blob service did not answer; the run goes on with the local cache alone."""


class CorruptRemoteEntry(Exception):
    pass


class BlobRemote:
    def __init__(self, container_name: str, account_name: str | None = None,
                 connection_string_env: str = DEFAULT_CONNECTION_ENV):
        if not os.environ.get(connection_string_env) and not account_name:
            raise OliveSystemsError("the shared cache needs an account or a connection string",
                                    f"set {connection_string_env}, or give account_name (DefaultAzureCredential)")
        self.container_name, self.account_name, self.connection_string_env = container_name, account_name, connection_string_env
        self.name = f"{account_name or 'blob'}/{container_name}"
        self._client = None
        self._container_ready = False
        self.down: str | None = None  # why the service was marked down; then no call goes out again
        self.failed_calls = 0  # calls that reached the wire and failed (the breaker keeps this at 1)

    @property
    def container(self):
        """The client, made on first use: a fully local warm run never imports the Azure SDK."""
        if self._client is None:
            from azure.storage.blob import ContainerClient

            connection_string = os.environ.get(self.connection_string_env)
            options = _client_options()
            if connection_string:
                self._client = ContainerClient.from_connection_string(connection_string, self.container_name, **options)
            else:
                from azure.identity import DefaultAzureCredential

                self._client = ContainerClient(f"https://{self.account_name}.blob.core.windows.net", self.container_name,
                                               credential=DefaultAzureCredential(), **options)
        return self._client

    # Every call goes through here so that any transport failure becomes RemoteUnavailable, and the
    # first one stops all later calls (the circuit breaker).
    def _call(self, work):
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        if self.down is not None:
            raise RemoteUnavailable(self.down)
        try:
            if not self._container_ready:
                try:
                    self.container.create_container()
                except ResourceExistsError:
                    pass
                self._container_ready = True
            return work()
        except (ResourceNotFoundError, ResourceExistsError):  # answers, not failures (absent, or lost a race)
            raise
        except AzureError as exc:
            self.failed_calls += 1
            self.down = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
            raise RemoteUnavailable(self.down) from None

    def manifest(self, kind: str, key: str) -> tuple[dict, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            download = self._call(lambda: self.container.download_blob(f"{kind}/{key}/manifest.json"))
            return json.loads(download.readall()), download.properties.etag
        except ResourceNotFoundError:
            return None

    def pull(self, kind: str, key: str, dest: Path) -> dict | None:
        """Download a complete entry into dest and verify it; None when there is none."""
        found = self.manifest(kind, key)
        if found is None:
            return None
        return self.download(kind, key, *found, dest)

    def download(self, kind: str, key: str, manifest: dict, etag: str, dest: Path) -> dict:
        """The files a manifest names, each checked against its sha256; a corrupt entry is unpublished."""
        import io
        import tarfile

        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self._call(lambda: self.container.download_blob(f"{kind}/{key}/{manifest['writer']}.tar",
                                                                    max_concurrency=4).readall())
        except ResourceNotFoundError:
            self._drop(kind, key, etag)
            raise CorruptRemoteEntry("its files are missing") from None
        import hashlib

        try:  # hash each file from memory as it is written: no second read
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                for member in archive.getmembers():
                    expected = manifest["files"].get(member.name)
                    if expected is None or not member.isfile():
                        raise CorruptRemoteEntry(f"unexpected member {member.name}")
                    content = archive.extractfile(member).read()
                    if len(content) != expected["size"] or hashlib.sha256(content).hexdigest() != expected["sha256"]:
                        raise CorruptRemoteEntry(f"{member.name} does not match its sha256")
                    target = dest / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
            missing = [name for name in manifest["files"] if not (dest / name).is_file()]
            if missing:
                raise CorruptRemoteEntry(f"{missing[0]} is missing")
        except (tarfile.TarError, OSError) as exc:
            self._drop(kind, key, etag)
            raise CorruptRemoteEntry(f"unreadable archive ({exc})") from None
        except CorruptRemoteEntry:
            self._drop(kind, key, etag)
            raise
        return manifest

    def push(self, kind: str, key: str, folder: Path, manifest: dict) -> bool:
        """Upload an entry; False when another writer published the key first (theirs stands)."""
        import io
        import tarfile

        from azure.core.exceptions import ResourceExistsError

        if self.manifest(kind, key) is not None:
            return False
        writer = uuid.uuid4().hex
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:") as archive:
            for name in manifest["files"]:
                archive.add(folder / name, arcname=name)
        buffer.seek(0)
        self._call(lambda: self.container.upload_blob(f"{kind}/{key}/{writer}.tar", buffer, overwrite=True, max_concurrency=4))
        document = json.dumps({**manifest, "writer": writer})
        try:
            self._call(lambda: self.container.upload_blob(f"{kind}/{key}/manifest.json", document, overwrite=False))
        except ResourceExistsError:  # lost the race: remove our files, keep theirs
            self._delete(f"{kind}/{key}/{writer}.tar")
            return False
        # Published: what else is under the key is garbage (the archive of a corrupt entry this one
        # replaces, archives of killed uploads, of writers that will lose the race).
        for name in self._call(lambda: [b.name for b in self.container.list_blobs(name_starts_with=f"{kind}/{key}/")]):
            if name not in (f"{kind}/{key}/manifest.json", f"{kind}/{key}/{writer}.tar"):
                self._delete(name)
        return True

    def _delete(self, name: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._call(lambda: self.container.delete_blob(name))
            return True
        except ResourceNotFoundError:  # its writer, or another sweep, removed it first
            return False

    def entries(self, kind: str) -> list[dict]:
        names = self._call(lambda: [b.name for b in self.container.list_blobs(name_starts_with=f"{kind}/")])
        return [{"key": name.split("/")[1], "manifest": name} for name in names if name.endswith("/manifest.json")]

    def prune_orphans(self, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
        """Delete blobs no complete entry uses: archives its manifest does not name (a corrupt entry's,
        a killed upload's), manifests whose archive is gone or that are not JSON, and the blobs of a key
        without a manifest once they are older than grace_s (younger ones may be an upload under way)."""
        import datetime
        import json as json_mod

        from azure.core.exceptions import ResourceNotFoundError

        now = datetime.datetime.now(datetime.timezone.utc)
        groups: dict[str, list] = {}
        for blob in self._call(lambda: list(self.container.list_blobs())):
            if blob.name.count("/") == 2:  # <kind>/<key>/<name>
                groups.setdefault(blob.name.rsplit("/", 1)[0], []).append(blob)
        removed = []
        for prefix, blobs in groups.items():
            names = {b.name for b in blobs}
            manifest_name = f"{prefix}/manifest.json"
            keep: set[str] = set()
            if manifest_name in names:
                try:
                    writer = json_mod.loads(self._call(lambda: self.container.download_blob(manifest_name).readall()))["writer"]
                except ResourceNotFoundError:  # unpublished meanwhile (found corrupt): next prune
                    continue
                except (ValueError, KeyError, TypeError):
                    writer = None
                if writer is not None and f"{prefix}/{writer}.tar" in names:
                    keep = {manifest_name, f"{prefix}/{writer}.tar"}
            elif all((now - b.last_modified).total_seconds() < grace_s for b in blobs):
                keep = names  # perhaps an upload under way: its manifest comes last
            for name in sorted(names - keep):
                if self._delete(name):
                    removed.append(name)
        return removed

    def _drop(self, kind: str, key: str, etag: str) -> None:
        """Unpublish a corrupt entry (only if nobody replaced it meanwhile) so a recompute can take its
        place; its archive stays until the replacement's push (or `cache prune`) removes it."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError

        if self.down is not None:
            return
        try:
            self.container.delete_blob(f"{kind}/{key}/manifest.json", etag=etag, match_condition=MatchConditions.IfNotModified)
        except AzureError:
            pass


def _client_options() -> dict:
    """Short timeouts, and no retry of a connection or read failure: an outage then costs one failed
    call (a refused connect: milliseconds; a black hole: CONNECT_TIMEOUT_S), after which the breaker
    holds. A busy service's 503 is retried once, about a second later."""
    from azure.storage.blob import LinearRetry

    return {"connection_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
            "retry_policy": LinearRetry(backoff=1, random_jitter_range=0.5, retry_total=1, retry_connect=0, retry_read=0,
                                        retry_status=1)}
