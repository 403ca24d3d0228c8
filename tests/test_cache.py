"""The local cache: full sha256 keys, atomic entries, corruption detected, kills leave nothing usable."""

import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor

from olive_systems.cache import LocalCache, make_key


def build_files(folder, payload=b"x" * 1000):
    (folder / "model").mkdir()
    (folder / "model" / "model.onnx").write_bytes(payload)
    return {"note": "built"}


def test_key_is_full_sha256_and_depends_on_every_part():
    base = {"input": "abc", "type": "P", "config": {"a": 1}, "accelerator": None, "versions": {"onnxruntime": "1"}}
    key = make_key(base)
    assert len(key) == 64 and int(key, 16) >= 0
    assert make_key(dict(base)) == key
    for field, value in [("input", "abd"), ("config", {"a": 2}), ("versions", {"onnxruntime": "2"}),
                         ("accelerator", {"device": "cpu"})]:
        assert make_key({**base, field: value}) != key


def test_put_then_get_round_trips(tmp_path):
    cache = LocalCache(tmp_path)
    key = make_key({"k": 1})
    assert cache.get("runs", key) is None
    entry = cache.put("runs", key, build_files)
    assert entry.meta == {"note": "built"}
    again = cache.get("runs", key)
    assert again.path == entry.path and (again.path / "model" / "model.onnx").read_bytes() == b"x" * 1000


def test_flipped_byte_is_detected_removed_and_reported(tmp_path):
    warnings = []
    cache = LocalCache(tmp_path, warn=warnings.append)
    key = make_key({"k": 2})
    entry = cache.put("runs", key, build_files)
    target = entry.path / "model" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[10] ^= 0xFF
    target.write_bytes(bytes(data))
    assert cache.get("runs", key) is None
    assert warnings and "corrupt" in warnings[0] and "sha256" in warnings[0]
    assert not entry.path.exists()
    assert cache.put("runs", key, build_files).meta["note"] == "built"  # recomputed cleanly


def test_failed_build_leaves_no_entry(tmp_path):
    cache = LocalCache(tmp_path)
    key = make_key({"k": 3})

    def explode(folder):
        (folder / "half.onnx").write_bytes(b"partial")
        raise RuntimeError("pass crashed")

    try:
        cache.put("runs", key, explode)
    except RuntimeError:
        pass
    assert cache.get("runs", key) is None
    assert not list((tmp_path / "tmp").iterdir())


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from olive_systems.cache import LocalCache
    def build(folder):
        for i in range(200):  # a slow, large write that can be killed anywhere
            with open(folder / f"part{i}.bin", "wb") as f:
                f.write(b"y" * 50000)
            time.sleep(0.002)
        return {"complete": True}
    LocalCache(Path(sys.argv[1])).put("runs", sys.argv[2], build)
""")


def test_kill_mid_write_at_many_points_never_exposes_a_partial_entry(tmp_path):
    key = make_key({"k": "killed"})
    cache = LocalCache(tmp_path)
    for delay in (0.05, 0.2, 0.4, 0.6, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), key])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        entry = cache.get("runs", key)
        if entry is not None:  # only a complete entry may ever be visible
            assert entry.meta == {"complete": True}
            assert len(list(entry.path.glob("part*.bin"))) == 200
            cache.clear()
    assert cache.get("runs", key) is None or cache.get("runs", key).meta == {"complete": True}
    cache.sweep()  # the killed writers' temp folders go
    assert not list((tmp_path / "tmp").glob("*-*"))


def _race(args):
    root, key, payload = args
    from pathlib import Path

    entry = LocalCache(Path(root)).put("runs", key, lambda folder: build_files(folder, payload))
    return (entry.path / "model" / "model.onnx").read_bytes()


def test_two_writers_of_one_key_both_finish_and_one_entry_stands(tmp_path):
    key = make_key({"k": "race"})
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_race, [(str(tmp_path), key, b"A" * 5000), (str(tmp_path), key, b"B" * 5000)]))
    assert results[0] == results[1]  # both see the winner's content
    assert len(list((tmp_path / "runs").glob("*/*"))) == 1
    assert LocalCache(tmp_path).get("runs", key) is not None
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.is_dir()]
