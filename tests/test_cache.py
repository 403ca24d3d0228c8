"""The local cache: full sha256 keys, atomic entries, corruption detected, kills leave nothing usable."""

import json
import os
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


# ---- single flight across processes (runs that share a cache) ----

FLIGHT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from olive_systems.cache import LocalCache
    from olive_systems.concurrency import SingleFlight
    root, key, log, hold = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
    cache = LocalCache(root)
    def build(folder):
        with open(log, "a") as f:
            f.write("built\\n")
        time.sleep(hold)  # long enough for the others to be waiting
        (folder / "f.bin").write_bytes(b"z" * 100)
        return {"by": sys.argv[5]}
    def waiting(key, pid):
        print(f"waiting for {pid}", flush=True)
    with SingleFlight(root / "locks", on_wait=waiting).lock(key):
        print("locked", flush=True)
        entry = cache.get("runs", key) or cache.put("runs", key, build)
    print("meta", entry.meta["by"], entry.source, flush=True)
""")


def _flight(tmp_path, key, name, hold=1.0):
    return subprocess.Popen([sys.executable, "-c", FLIGHT, str(tmp_path), key, str(tmp_path / "builds.log"), str(hold), name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_processes_on_one_key_compute_it_once_and_all_use_it(tmp_path):
    key = make_key({"k": "flight"})
    procs = [_flight(tmp_path, key, f"p{i}") for i in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    assert (tmp_path / "builds.log").read_text().count("built") == 1
    sources = sorted(o[0].splitlines()[-1].split()[-1] for o in outs)
    assert sources == ["computed", "local", "local"]
    assert len({o[0].splitlines()[-1].split()[1] for o in outs}) == 1  # everyone got the one builder's entry
    assert not list((tmp_path / "locks").glob("*.lock"))  # a lock file goes with its holder


def test_a_holder_killed_mid_step_does_not_block_the_next_run(tmp_path):
    key = make_key({"k": "killed holder"})
    holder = _flight(tmp_path, key, "holder", hold=600)
    assert holder.stdout.readline().strip() == "locked"
    waiter = _flight(tmp_path, key, "waiter", hold=0)
    assert waiter.stdout.readline().strip() == f"waiting for {holder.pid}"  # it knows whom it waits for
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err[-1500:]
    assert out.splitlines()[-1] == "meta waiter computed"  # the killed run's step is computed by the next one
    assert (tmp_path / "builds.log").read_text().count("built") == 2


def test_sweep_removes_only_lock_files_nobody_holds(tmp_path):
    from olive_systems.concurrency import SingleFlight

    dead = _flight(tmp_path, make_key({"k": "dead"}), "dead", hold=600)
    assert dead.stdout.readline().strip() == "locked"
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    stale = list((tmp_path / "locks").glob("*.lock"))
    assert len(stale) == 1  # a killed run leaves its lock file...
    live_key = make_key({"k": "live"})
    with SingleFlight(tmp_path / "locks").lock(live_key):
        removed = LocalCache(tmp_path).sweep()
        assert stale[0] in removed and not stale[0].exists()  # ...which the next start sweeps
        assert (tmp_path / "locks" / f"{live_key}.lock").exists()  # a held one stays


def test_prune_orphans_removes_manifestless_entry_folders_and_stale_locks(tmp_path):
    cache = LocalCache(tmp_path)
    good = cache.put("runs", make_key({"k": "good"}), build_files)
    half = cache.entry_path("runs", make_key({"k": "half"}))
    half.mkdir(parents=True)
    (half / "model.onnx").write_bytes(b"no manifest")
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "abc.lock").write_text("12345")
    (tmp_path / "tmp" / "trash-0123").mkdir(parents=True)  # a discard killed half-way
    removed = cache.prune_orphans()
    assert sorted(removed) == sorted([str(half), str(tmp_path / "locks" / "abc.lock"), str(tmp_path / "tmp" / "trash-0123")])
    assert not half.exists() and cache.get("runs", good.key) is not None
    assert cache.prune_orphans() == []  # nothing left to sweep


RUN = textwrap.dedent("""
    import json, sys
    import olive_systems
    output = olive_systems.run(json.loads(open(sys.argv[1]).read()))
    print(len(output.jobs))
    print(json.dumps([{k: s[k] for k in ("step", "name", "key", "source")} for s in output.steps]))
""")


def test_three_concurrent_runs_on_one_cold_cache_compute_each_step_once(tiny_bert, tmp_path):
    from conftest import tiny_recipe

    procs = []
    for index in range(3):
        recipe = tiny_recipe(tiny_bert, tmp_path / f"run{index}")
        recipe["engine"]["cache_dir"] = str(tmp_path / "cache")  # one cache, three outputs
        recipe["pass_flows"] = [["conversion"], ["conversion", "dynamic"]]
        metrics = recipe["evaluators"]["common"]["metrics"]
        recipe["evaluators"]["common"]["metrics"] = [m for m in metrics if m["type"] in ("latency", "accuracy")]
        recipe["engine"]["evaluator"] = "common"
        path = tmp_path / f"run{index}.json"
        path.write_text(json.dumps(recipe))
        procs.append(subprocess.Popen([sys.executable, "-c", RUN, str(path)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    runs = [json.loads(o[0].splitlines()[-1]) for o in outs]
    needed = {s["key"] for s in runs[0]}
    assert len(needed) == 7  # input model: quality + timing; 2 passes; 2 candidates: quality, then timed together
    assert all({s["key"] for s in steps} == needed for steps in runs)
    computed = [s["key"] for steps in runs for s in steps if s["source"] == "computed"]
    assert sorted(computed) == sorted(needed), runs  # every step once, by one of the three
    assert sum(int(o[0].splitlines()[-2]) for o in outs) == len(needed)  # one job per step, in all three runs
    assert not list((tmp_path / "cache" / "locks").glob("*.lock"))


def test_a_run_killed_while_computing_a_step_blocks_no_later_run(tiny_bert, tmp_path):
    from conftest import tiny_recipe

    paths = []
    for name in ("killed", "next"):
        recipe = tiny_recipe(tiny_bert, tmp_path / name)
        recipe["engine"]["cache_dir"] = str(tmp_path / "cache")
        recipe["pass_flows"] = [["conversion", "dynamic"]]
        recipe["evaluators"]["common"]["metrics"] = recipe["evaluators"]["common"]["metrics"][1:2]  # accuracy
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(recipe))
    killed = subprocess.Popen([sys.executable, "-c", RUN, str(paths[0])], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    locks = tmp_path / "cache" / "locks"
    deadline = time.time() + 300
    while not list(locks.glob("*.lock")) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "the run ended before it held a step's lock"
    os.killpg(killed.pid, signal.SIGKILL)  # the run and its job, mid-step
    killed.wait()
    assert list(locks.glob("*.lock"))  # it held a step when it died
    nxt = subprocess.run([sys.executable, "-c", RUN, str(paths[1])], capture_output=True, text=True, timeout=600)
    assert nxt.returncode == 0, nxt.stderr[-2000:]
    steps = json.loads(nxt.stdout.splitlines()[-1])
    assert len(steps) == 4 and "computed" in {s["source"] for s in steps}  # it did the killed run's step itself
    assert not list(locks.glob("*.lock"))  # the stale lock file was swept at its start
