"""The context cache: built once under a lock, verified before reuse, never stale or partial."""
import json
import multiprocessing
import time
from pathlib import Path

import pytest

from neuroverse_bids.context_cache import MANIFEST, check_entry, ensure_entry, request_key

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
