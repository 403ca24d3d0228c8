"""The shared blob cache, for real: Azurite (npm) and the real azure-storage-blob client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import olive_systems
from olive_systems.cache import LocalCache, make_key

from conftest import REPO, tiny_recipe

AZURITE = REPO / "node_modules" / ".bin" / "azurite-blob"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """An Azurite blob service on a free loopback port, with its data in a temp folder."""

    def __init__(self, location: Path):
        self.location = location
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process = None

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.location),
             "--disableTelemetry", "--loose", "--skipApiVersionCheck", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(600):  # node starts it in about 2 s; a loaded CI machine has been seen to take over 10
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"azurite exited with code {self.process.returncode} before listening")
            time.sleep(0.1)
        raise RuntimeError("azurite did not listen within 60 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    if shutil.which("node") is None or not AZURITE.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test the shared cache: node and `npm install` (azurite) are missing")
        pytest.skip("node or node_modules/.bin/azurite-blob missing: run npm install")
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def shared(azurite, monkeypatch):
    """A fresh container name, with the connection string where a user would put it: the environment."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return f"olive-{uuid.uuid4().hex[:12]}"


def container(azurite, name):
    from azure.storage.blob import ContainerClient

    return ContainerClient.from_connection_string(azurite.connection_string, name)


def twin(tiny_bert, tmp: Path, name: str, **engine) -> dict:
    recipe = tiny_recipe(tiny_bert, tmp)
    recipe["engine"].update(shared_cache={"container_name": name}, **engine)
    return recipe


def sources(output) -> list[str]:
    return [step["source"] for step in output.steps]


def test_a_wiped_local_cache_gets_everything_from_the_blob_cache(tiny_bert, tmp_path, shared):
    first = olive_systems.run(twin(tiny_bert, tmp_path / "a", shared))
    assert set(sources(first)) == {"computed"}
    again = olive_systems.run(twin(tiny_bert, tmp_path / "b", shared))  # another machine: empty local cache
    assert sources(again) and set(sources(again)) == {"shared"}, again.steps
    assert {m.model_id: m.metrics_value for m in again.get_output_models()} == \
           {m.model_id: m.metrics_value for m in first.get_output_models()}
    assert recipe_has_no_secret(tmp_path)


def recipe_has_no_secret(tmp_path: Path) -> bool:
    written = "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*.json"))
    return DEV_KEY not in written


RACER = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, sys.argv[1])
    import olive_systems
    recipe = json.loads(open(sys.argv[2]).read())
    out = olive_systems.run(recipe)
    print(json.dumps([s["source"] for s in out.steps]))
""")


def test_two_processes_racing_on_the_same_keys_both_finish_with_one_entry(tiny_bert, tmp_path, shared, azurite):
    procs = []
    for side in ("left", "right"):
        recipe = twin(tiny_bert, tmp_path / side, shared, evaluate_input_model=False)
        recipe["pass_flows"] = [["conversion", "fusion", "dynamic"]]
        recipe["evaluators"] = {}
        recipe["engine"].pop("evaluator", None)
        path = tmp_path / f"{side}.json"
        path.write_text(json.dumps(recipe))
        procs.append(subprocess.Popen([sys.executable, "-c", RACER, str(REPO / "tests"), str(path)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()))
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    manifests = [b.name for b in container(azurite, shared).list_blobs() if b.name.endswith("manifest.json")]
    assert len(manifests) == 3 and len(set(manifests)) == 3  # one entry per pass, whoever wrote it
    remote = _remote(shared)
    for name in manifests:
        kind, key = name.split("/")[:2]
        dest = tmp_path / "pulled" / key
        dest.mkdir(parents=True)
        assert remote.pull(kind, key, dest) is not None  # every file matches its sha256


def _remote(name):
    from olive_systems.cache.blob import BlobRemote

    return BlobRemote(name)


UPLOADER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from olive_systems.cache import LocalCache
    from olive_systems.cache.blob import BlobRemote
    def build(folder):
        for i in range(12):
            (folder / f"part{i}.bin").write_bytes(bytes([i]) * 2_000_000)
        return {"complete": True}
    LocalCache(Path(sys.argv[2]), remote=BlobRemote(sys.argv[3])).put("runs", sys.argv[4], build)
""")


def test_a_run_killed_during_upload_leaves_nothing_a_reader_would_use(tmp_path, shared):
    key = make_key({"upload": "killed"})
    for index, delay in enumerate((0.6, 1.0, 1.4, 1.8, 2.4)):
        proc = subprocess.Popen([sys.executable, "-c", UPLOADER, str(REPO), str(tmp_path / f"local{index}"), shared, key])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        dest = tmp_path / f"read{index}"
        dest.mkdir()
        manifest = _remote(shared).pull("runs", key, dest)
        if manifest is not None:  # only a whole, verified entry may ever be seen
            assert manifest["meta"] == {"complete": True} and len(list(dest.glob("part*.bin"))) == 12
            return
    # the slowest kill point may still be before the manifest: then nothing was ever visible


def test_flipped_bytes_in_a_blob_are_detected_recomputed_and_reported(tiny_bert, tmp_path, shared, azurite):
    olive_systems.run(twin(tiny_bert, tmp_path / "a", shared))
    blobs = container(azurite, shared)
    run_manifests = [b.name for b in blobs.list_blobs(name_starts_with="runs/") if b.name.endswith("manifest.json")]
    victim = None
    for name in run_manifests:
        manifest = json.loads(blobs.download_blob(name).readall())
        if manifest["meta"]["pass"] == "static":
            victim = f"{name.rsplit('/', 1)[0]}/{manifest['writer']}.tar"
    data = bytearray(blobs.download_blob(victim).readall())
    data[len(data) // 2] ^= 0xFF  # inside model.onnx, the bulk of the archive
    blobs.upload_blob(victim, bytes(data), overwrite=True)
    events = []
    again = olive_systems.run(twin(tiny_bert, tmp_path / "b", shared), on_event=events.append)
    recomputed = [s["name"] for s in again.steps if s["source"] == "computed"]
    # the pass alone: it recomputes the same model, so its evaluation's key matches and comes from the blob cache
    assert recomputed == ["static"], again.steps
    assert any(e["kind"] == "warning" and "corrupt" in e["name"] for e in events)
    assert not again.failures
    # The replacement's push removed the corrupt archive: the key holds its manifest and one good archive.
    prefix = victim.rsplit("/", 1)[0]
    left = sorted(b.name for b in blobs.list_blobs(name_starts_with=prefix + "/"))
    assert victim not in left and len(left) == 2 and f"{prefix}/manifest.json" in left, left
    kind, key = prefix.split("/")
    assert _remote(shared).pull(kind, key, tmp_path / "verified") is not None


def test_prune_sweeps_blobs_no_complete_entry_uses(tmp_path, shared, azurite):
    from olive_systems.cache.blob import BlobRemote

    cache = LocalCache(tmp_path / "cache", remote=BlobRemote(shared))

    def build(folder):
        (folder / "f.bin").write_bytes(b"payload")
        return {"pass": "p"}

    keys = [cache.put("runs", make_key({"n": n}), build).key for n in range(3)]
    blobs = container(azurite, shared)
    blobs.upload_blob(f"runs/{keys[0]}/deadbeef.tar", b"a killed upload beside a complete entry")
    blobs.delete_blob(f"runs/{keys[1]}/manifest.json")  # an entry found corrupt: unpublished, archive left
    writer = json.loads(blobs.download_blob(f"runs/{keys[2]}/manifest.json").readall())["writer"]
    blobs.delete_blob(f"runs/{keys[2]}/{writer}.tar")  # a manifest whose files are gone
    pruned = cli("cache", "prune", "--cache-dir", str(tmp_path / "cache"), "--container-name", shared)
    assert pruned.returncode == 0, pruned.stderr
    names = {b.name for b in blobs.list_blobs()}
    assert f"runs/{keys[0]}/deadbeef.tar" not in names and f"runs/{keys[0]}/manifest.json" in names
    assert f"runs/{keys[2]}/manifest.json" not in names
    assert any(name.startswith(f"runs/{keys[1]}/") for name in names)  # young: it may be an upload under way
    assert "removed 2 orphans" in pruned.stdout, pruned.stdout
    assert BlobRemote(shared).prune_orphans(grace_s=0) == [n for n in sorted(names) if n.startswith(f"runs/{keys[1]}/")]
    assert _remote(shared).pull("runs", keys[0], tmp_path / "ok") is not None  # the complete entry is untouched


class CountingDeadService:
    """A blob endpoint that accepts connections and drops them at once (a service going down),
    counting how many connections the client opens."""

    def __init__(self):
        import threading

        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port, self.connections = self.server.getsockname()[1], 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def test_an_outage_costs_one_failed_call_then_the_remote_stays_down(tmp_path, monkeypatch):
    from olive_systems.cache.blob import BlobRemote

    dead = CountingDeadService()
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};"
                       f"BlobEndpoint=http://127.0.0.1:{dead.port}/devstoreaccount1;")
    warnings, remote = [], BlobRemote("olive-down")
    cache = LocalCache(tmp_path, warn=warnings.append, remote=remote)

    def build(folder):
        (folder / "f.bin").write_bytes(b"computed here")
        return {"pass": "p"}

    for n in range(4):  # a run's next steps: look up, compute locally, (not) push
        key = make_key({"n": n})
        assert cache.get("runs", key) is None
        assert cache.put("runs", key, build).source == "computed"
    assert remote.down and remote.failed_calls == 1
    assert dead.connections == 1  # no retry, and nothing on the wire once marked down
    assert len(warnings) == 1 and "unavailable" in warnings[0] and "local cache only" in warnings[0]
    dead.server.close()


def test_blob_outage_mid_run_degrades_to_local_with_one_warning(tiny_bert, tmp_path, shared, azurite):
    from olive_systems.engine import Engine
    from olive_systems.recipe import load_recipe

    events = []

    def stop_after_first_pass(event):
        events.append(event)
        if event["kind"] == "done" and event.get("step") == "pass" and azurite.process.poll() is None:
            azurite.stop()

    engine = Engine(load_recipe(twin(tiny_bert, tmp_path, shared)), on_event=stop_after_first_pass)
    try:
        output = engine.run()
    finally:
        azurite.start()
    assert not output.failures and len(output.get_output_models()) == 3  # finished on the local cache
    assert engine.cache.remote.down and engine.cache.remote.failed_calls == 1
    assert [e["kind"] for e in events].count("warning") == 1


def cli(*args):
    return subprocess.run([sys.executable, "-m", "olive_systems", *args], capture_output=True, text=True, env=os.environ.copy())


def test_cache_commands_push_pull_list_and_prune(tmp_path, shared):
    cache = LocalCache(tmp_path / "mine")

    def build(n):
        def write(folder):
            (folder / "f.bin").write_bytes(bytes([n]) * 10)
            return {"pass": f"p{n}"}
        return write

    keys = [cache.put("runs", make_key({"n": n}), build(n)).key for n in range(3)]
    pushed = cli("cache", "push", "--cache-dir", str(tmp_path / "mine"), "--container-name", shared)
    assert pushed.returncode == 0 and "pushed 3 entries" in pushed.stdout, pushed.stderr
    listed = cli("cache", "list", "--cache-dir", str(tmp_path / "empty"), "--container-name", shared)
    assert sum("(shared)" in line for line in listed.stdout.splitlines()) == 3
    pulled = cli("cache", "pull", keys[0], "--cache-dir", str(tmp_path / "theirs"), "--container-name", shared)
    assert f"{keys[0]}: pulled" in pulled.stdout, pulled.stderr
    assert (LocalCache(tmp_path / "theirs").get("runs", keys[0]).path / "f.bin").read_bytes() == bytes([0]) * 10
    shown = cli("cache", "show", keys[1][:10], "--cache-dir", str(tmp_path / "mine"))
    assert json.loads(shown.stdout)["meta"] == {"pass": "p1"}
    kept = cli("cache", "prune", "--older-than", "1", "--cache-dir", str(tmp_path / "mine"))
    assert "pruned 0 of 3" in kept.stdout
    gone = cli("cache", "prune", "--older-than", "0", "--cache-dir", str(tmp_path / "mine"))
    assert "pruned 3 of 3" in gone.stdout and not LocalCache(tmp_path / "mine").entries("runs")
