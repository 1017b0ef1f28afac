"""The context cache: built once under a lock, verified before reuse, never stale or partial;
kept under a size limit (least recently used first, never an entry in use); its command."""
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from neuroverse_bids.context_cache import (MANIFEST, check_entry, ensure_entry, release_entry,
                                           request_key)
from neuroverse_bids.context_cache_store import (DEFAULT_MAX_GB, GB, MAX_GB_VARIABLE, evict,
                                                 list_entries, max_cache_bytes)
from neuroverse_bids.workflows.errors import UsageError

REQUEST = {"Grid": {"shape": [16, 16, 16], "voxel_size_mm": 12.0}, "Template": "T",
           "Pairs": [{"subject": "02", "image": {"path": "/x", "sha256": "ab"}}]}


def _build(folder: Path, log: Path = None, seconds: float = 0.0):
    time.sleep(seconds)
    (folder / "pairs").mkdir()
    (folder / "pairs" / "sub-02_image.nii.gz").write_bytes(b"image on the grid")
    (folder / "context_pool.npz").write_bytes(b"stacked pool")
    if log is not None:
        with open(log, "a") as handle:
            handle.write("built\n")


def test_first_call_builds_later_calls_reuse(tmp_path):
    first = ensure_entry(tmp_path / "cache", REQUEST, _build)
    assert first["Reused"] is False and first["CacheKey"] == request_key(REQUEST)
    entry = Path(first["Entry"])
    manifest = json.loads((entry / MANIFEST).read_text())
    assert manifest["Request"] == REQUEST and set(manifest["Files"]) == {
        "pairs/sub-02_image.nii.gz", "context_pool.npz"}
    assert "Host" in manifest["BuiltBy"]
    second = ensure_entry(tmp_path / "cache", REQUEST, lambda folder: pytest.fail("rebuilt"))
    assert second["Reused"] is True and second["Entry"] == first["Entry"]
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_another_grid_is_another_entry(tmp_path):
    first = ensure_entry(tmp_path, REQUEST, _build)
    other = dict(REQUEST, Grid={"shape": [32, 32, 32], "voxel_size_mm": 6.0})
    second = ensure_entry(tmp_path, other, _build)
    assert second["Reused"] is False and second["Entry"] != first["Entry"]


def test_corrupt_partial_or_foreign_entries_are_rebuilt(tmp_path):
    entry = Path(ensure_entry(tmp_path, REQUEST, _build)["Entry"])
    (entry / "context_pool.npz").write_bytes(b"truncated")
    assert "checksum" in check_entry(entry, REQUEST)
    again = ensure_entry(tmp_path, REQUEST, _build)
    assert again["Reused"] is False and "checksum" in again["RebuiltBecause"]
    # an entry written for another model grid under this name (or by hand): never reused
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["Request"]["Grid"] = {"shape": [8, 8, 8], "voxel_size_mm": 24.0}
    (entry / MANIFEST).write_text(json.dumps(manifest))
    rebuilt = ensure_entry(tmp_path, REQUEST, _build)
    assert rebuilt["Reused"] is False and "Grid" in rebuilt["RebuiltBecause"]
    # a builder that died: no manifest (the entry is renamed into place only when complete)
    (entry / MANIFEST).unlink()
    assert ensure_entry(tmp_path, REQUEST, _build)["RebuiltBecause"].startswith("no manifest")


def test_a_failed_build_leaves_nothing(tmp_path):
    def fail(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("registration crashed")

    with pytest.raises(RuntimeError):
        ensure_entry(tmp_path, REQUEST, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{request_key(REQUEST)}.lock"]


def _worker(cache, log, results):
    status = ensure_entry(cache, REQUEST, lambda folder: _build(folder, log, seconds=1.0))
    results.put(status["Reused"])


def test_concurrent_processes_build_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    log = tmp_path / "builds.log"
    workers = [context.Process(target=_worker, args=(tmp_path / "cache", log, results))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    reused = sorted(results.get(timeout=5) for _ in workers)
    assert reused == [False, True, True]
    assert log.read_text() == "built\n"


# ------------------------------------------------------------- size limit, eviction, command
def _request(name: str) -> dict:
    return dict(REQUEST, Template=name)


def _sized_build(size: int):
    def build(folder: Path):
        (folder / "context_pool.npz").write_bytes(b"x" * size)
    return build


def _entry_bytes(status) -> int:
    return sum(p.stat().st_size for p in Path(status["Entry"]).rglob("*") if p.is_file())


def _last_used(cache: Path, key: str, seconds: float):
    os.utime(cache / f"{key}.use", (seconds, seconds))


def test_least_recently_used_entries_are_evicted_first(tmp_path):
    """Eviction order is the last use (the ``.use`` file's mtime, refreshed on every hit), and
    the cache ends within its limit with the entry in use kept."""
    cache = tmp_path / "cache"
    built = {}
    for name in "ABC":
        built[name] = ensure_entry(cache, _request(name), _sized_build(4000), max_gb=math.inf)
        release_entry(built[name]["Entry"])
    keys = {name: status["CacheKey"] for name, status in built.items()}
    for name, stamp in zip("ABC", (1000, 3000, 2000)):  # B newest, A oldest
        _last_used(cache, keys[name], stamp)
    assert [e["Key"] for e in list_entries(cache)] == [keys["A"], keys["C"], keys["B"]]
    again = ensure_entry(cache, _request("A"), lambda f: pytest.fail("rebuilt"), max_gb=math.inf)
    release_entry(again["Entry"])  # a hit: A is now the most recently used
    assert [e["Key"] for e in list_entries(cache)][-1] == keys["A"]
    limit = 2.5 * _entry_bytes(built["A"])  # room for two entries
    new = ensure_entry(cache, _request("D"), _sized_build(4000), max_gb=limit / GB)
    assert new["Evicted"] == [keys["C"], keys["B"]]
    left = list_entries(cache)
    assert {e["Key"] for e in left} == {keys["A"], new["CacheKey"]}
    assert sum(e["Bytes"] for e in left) <= limit
    assert [e["InUse"] for e in left if e["Key"] == new["CacheKey"]] == [True]
    assert not any((cache / f"{keys[n]}{s}").exists() for n in "BC" for s in ("", ".use", ".lock"))
    release_entry(new["Entry"])


def test_entries_in_use_by_this_process_are_kept(tmp_path, caplog):
    cache = tmp_path / "cache"
    first = ensure_entry(cache, _request("A"), _sized_build(1000), max_gb=math.inf)
    second = ensure_entry(cache, _request("B"), _sized_build(1000), max_gb=0)
    assert second["Evicted"] == [] and Path(first["Entry"]).is_dir()
    assert "over its limit" in caplog.text
    release_entry(first["Entry"])
    assert evict(cache, 0) == [first["CacheKey"]]  # released: the least recently used goes
    assert evict(cache, 0) == [] and Path(second["Entry"]).is_dir()  # B is still held
    release_entry(second["Entry"])
    assert evict(cache, 0) == [second["CacheKey"]] and list_entries(cache) == []


def test_size_limit_from_option_variable_or_default(monkeypatch):
    monkeypatch.delenv(MAX_GB_VARIABLE, raising=False)
    assert max_cache_bytes() == DEFAULT_MAX_GB * GB
    monkeypatch.setenv(MAX_GB_VARIABLE, "0.5")
    assert max_cache_bytes() == 0.5 * GB and max_cache_bytes(2) == 2 * GB  # the option wins
    assert max_cache_bytes(math.inf) == math.inf
    for bad in ("-1", "many", "nan"):
        monkeypatch.setenv(MAX_GB_VARIABLE, bad)
        with pytest.raises(UsageError, match=MAX_GB_VARIABLE):
            max_cache_bytes()
    with pytest.raises(UsageError, match="--context-cache-max-gb"):
        max_cache_bytes(-2.0)
    from neuroverse_bids.cli.parser import build_parser

    args = build_parser().parse_args(["in", "out", "participant", "--context-cache-max-gb", "2"])
    assert args.context_cache_max_gb == 2.0


def _holder(cache, ready, done):
    ensure_entry(cache, _request("held"), _sized_build(1000), max_gb=math.inf)
    ready.set()
    done.wait(120)


def test_cache_command_lists_and_clears_but_keeps_entries_of_live_runs(tmp_path, capsys):
    from neuroverse_bids.cli.cache import main

    out = tmp_path / "out"
    cache = out / "cache" / "context-sets"
    free = ensure_entry(cache, _request("free"), _sized_build(3000), max_gb=math.inf)
    release_entry(free["Entry"])
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_holder, args=(cache, ready, done))
    holder.start()
    try:
        assert ready.wait(120)
        held = request_key(_request("held"))
        assert main(["list", str(out)]) == 0
        text = capsys.readouterr().out
        assert "2 entries" in text and "IN USE" in text
        rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
        assert rows[free["CacheKey"]][5] == "no" and rows[held][5] == "yes"  # key size date in-use
        assert main(["list", "--cache", str(cache), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert {e["Key"]: e["InUse"] for e in listed["Entries"]} == {free["CacheKey"]: False,
                                                                     held: True}
        assert main(["clear", str(out), "--key", "0" * 20]) == 64
        assert main(["clear", str(out)]) == 75  # the live run's entry is kept
        captured = capsys.readouterr()
        assert f"removed {free['CacheKey']}" in captured.out and held in captured.err
        assert [e["Key"] for e in list_entries(cache)] == [held]
    finally:
        done.set()
        holder.join(timeout=60)
    assert holder.exitcode == 0
    (cache / f".tmp-{'1' * 20}-deadhost-1").mkdir()  # a builder that died, and its lock file
    (cache / f"{'1' * 20}.lock").touch()
    assert main(["clear", "--cache", str(cache)]) == 0
    assert list(cache.iterdir()) == []  # lock and use files go with their entries
    assert main(["list", str(tmp_path / "nowhere")]) == 66
    assert main(["list"]) == 64 and main(["list", str(out), "--cache", str(cache)]) == 64


def test_prune_command_evicts_down_to_the_size_given(tmp_path, capsys):
    from neuroverse_bids.cli.cache import main

    cache = tmp_path / "cache"
    statuses = [ensure_entry(cache, _request(n), _sized_build(2 ** 20), max_gb=math.inf)
                for n in "AB"]
    for status, stamp in zip(statuses, (1000, 2000)):
        release_entry(status["Entry"])
        _last_used(cache, status["CacheKey"], stamp)
    assert main(["prune", "--cache", str(cache), "--max-gb", str(1.5 / 1024)]) == 0
    assert f"removed {statuses[0]['CacheKey']}" in capsys.readouterr().out
    assert [e["Key"] for e in list_entries(cache)] == [statuses[1]["CacheKey"]]


def test_without_file_locks_lock_folders_and_recent_use_protect_entries(tmp_path, monkeypatch):
    """File systems without POSIX locks: the key's lock is a folder (gone afterwards), and an
    entry used within :data:`STALE_LOCK_SECONDS` counts as in use."""
    import errno

    from neuroverse_bids import context_cache_store
    from neuroverse_bids.locks import NoFileLocks

    def no_file_locks(fd, **_):
        raise NoFileLocks(errno.ENOLCK, "no locks on this file system")

    monkeypatch.setattr(context_cache_store, "lock_file", no_file_locks)
    cache = tmp_path / "cache"
    status = ensure_entry(cache, REQUEST, _build, max_gb=math.inf)
    assert ensure_entry(cache, REQUEST, lambda f: pytest.fail("rebuilt"))["Reused"] is True
    release_entry(status["Entry"])
    release_entry(status["Entry"])
    assert not list(cache.glob("*.lock.d"))
    assert evict(cache, 0) == [] and list_entries(cache)[0]["InUse"] is True  # used just now
    old = time.time() - context_cache_store.STALE_LOCK_SECONDS - 60
    _last_used(cache, status["CacheKey"], old)
    assert evict(cache, 0) == [status["CacheKey"]] and list_entries(cache) == []


# ------------------------------------------------------------------ building an entry's files
def test_build_pool_writes_each_pair_on_the_grid_and_the_stacked_pool(demo_dataset, tmp_path,
                                                                      monkeypatch):
    """:func:`build_pool` runs the context-set workflow and copies what its outputnode hands
    over: each pair on the model grid (``pairs/``) and the stacked pool, in the pairs' order."""
    import nibabel as nb
    import numpy as np

    from neuroverse_bids.context_cache import POOL_FILE, build_pool
    from neuroverse_bids.context_set import ContextPair
    from neuroverse_bids.workflows.geometry import model_grid
    from neuroverse_bids.workflows.templates import get_template

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(demo_dataset / "templateflow"))
    template = get_template("MNI152NLin2009aSym")
    grid = tmp_path / "grid.nii.gz"
    nb.save(model_grid(nb.load(str(template["brain_mask"])), 16, 12.0), str(grid))
    labels = demo_dataset / "derivatives" / "labels"
    pairs = [ContextPair(s, demo_dataset / "bids" / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz",
                         [labels / f"sub-{s}" / "anat" / f"sub-{s}_desc-brain_mask.nii.gz"], [None])
             for s in ("03", "02")]
    for name in ("entry", "rebuilt"):  # a rebuild in the same work folder copies again
        folder = tmp_path / name
        folder.mkdir()
        build_pool(folder, pairs=pairs, template_file=template["t1w"], grid_reference=grid,
                   task="segmentation", degradation="", sloppy=True, seed=0,
                   plugin={"plugin": "Linear"}, work_dir=tmp_path / "work")
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
            POOL_FILE, "pairs/sub-02_image.nii.gz", "pairs/sub-02_output-0.nii.gz",
            "pairs/sub-03_image.nii.gz", "pairs/sub-03_output-0.nii.gz"]
    for name in ("sub-02_image", "sub-03_output-0"):
        assert nb.load(str(folder / "pairs" / f"{name}.nii.gz")).shape == (16, 16, 16)
    pool = np.load(folder / POOL_FILE)
    assert list(pool["subjects"]) == ["03", "02"]
    assert pool["images"].shape == (2, 16, 16, 16) and pool["outputs"].shape == (1, 2, 16, 16, 16)
    mask = np.asanyarray(nb.load(str(folder / "pairs" / "sub-03_output-0.nii.gz")).dataobj)
    assert np.array_equal(pool["outputs"][0, 0], (mask > 0.5).astype(np.float32))
