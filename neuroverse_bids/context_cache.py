"""The context set as a reusable artefact: registered context pairs and their stack, built once.

An entry holds everything a participant run needs from the context pool, for one (spec, model
grid, template, selection). Its name is a content hash of that request (:func:`request_key`),
which includes the sha256 of every source file, so an edited label or another grid is another
entry and a stale one is never read::

    <cache>/<key>/manifest.json        the request, the source paths, the sha256 of each file
                                       below, who built it and in how many seconds
    <cache>/<key>/pairs/sub-<label>_*  each pair on the model grid (image not normalised)
    <cache>/<key>/context_pool.npz     the stacked pool: images [L,D,H,W] (normalised to
                                       [0, 1]), outputs [K,L,D,H,W], subjects [L]
    <cache>/<key>.lock, <key>.use      locks and last use (:mod:`.context_cache_store`)

The first process takes the lock, builds into ``.tmp-<key>-<host>-<pid>`` and renames it to
``<key>`` when complete (the manifest is written last); the others wait on the lock, then verify
the manifest and the checksums and read. An entry that fails the check is removed and rebuilt.
A run holds its entry in use until :func:`release_entry`; the cache is kept under a size limit
by evicting the least recently used entries that no live run holds (see
:mod:`.context_cache_store`; ``neuroverse3d-cache`` lists, prunes and clears it).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from .context_cache_store import (MANIFEST, cache_lock, evict, hold, max_cache_bytes,  # noqa: F401
                                  release_entry)
from .model.hashing import array_sha256, file_sha256, text_sha256
from .workflows.errors import OutputError

LOGGER = logging.getLogger("neuroverse3d")
CACHE_FORMAT = 1
POOL_FILE = "context_pool.npz"


def image_digest(path) -> str:
    """sha256 of a NIfTI's voxel data and affine (not its bytes: gzip stores a time stamp, so a
    template written again from the same source keeps its digest)."""
    import nibabel as nb
    import numpy as np

    img = nb.load(str(path))
    return array_sha256(np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64))


def request_key(request: dict) -> str:
    """Content hash of a request (canonical JSON)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return text_sha256(text, 20)


def _who() -> dict:
    job = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
           if k in os.environ}
    return {"Host": socket.gethostname(), "PID": os.getpid(), **job}


def check_entry(entry: Path, request: dict) -> Optional[str]:
    """None when ``entry`` is complete and was built for ``request``; else why not."""
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (incomplete entry)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable manifest ({error})"
    if manifest.get("Format") != CACHE_FORMAT:
        return f"cache format {manifest.get('Format')} (this version writes {CACHE_FORMAT})"
    recorded = manifest.get("Request", {})
    if recorded != json.loads(json.dumps(request, default=str)):
        differing = sorted(k for k in set(recorded) | set(request)
                           if recorded.get(k) != json.loads(json.dumps(request.get(k), default=str)))
        return f"built for another request (differs in {', '.join(differing)})"
    for name, digest in manifest.get("Files", {}).items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None


def ensure_entry(cache_dir, request: dict, build: Callable[[Path], None],
                 sources: Optional[dict] = None, max_gb: Optional[float] = None) -> dict:
    """The entry for ``request`` under ``cache_dir``, built by ``build(folder)`` when needed,
    held in use by this process until :func:`release_entry`; then the least recently used
    other entries are evicted down to :func:`max_cache_bytes` of ``max_gb``.

    ``build`` writes its files into an empty folder; ``sources`` (where the inputs were read,
    not part of the key: the same data mounted elsewhere is the same entry) goes into the
    manifest. Returns what happened, for the sidecars:
    ``CacheKey``, ``Entry``, ``Reused``, ``RebuiltBecause`` (a rejected entry), ``BuiltBy``,
    ``SecondsWaiting`` (for the lock), ``SecondsPreparing`` (wait + build or check) and
    ``Evicted`` (the keys removed to respect the limit).
    """
    limit = max_cache_bytes(max_gb)
    status = _ensure_held(cache_dir, request, build, sources)
    try:
        status["Evicted"] = evict(Path(status["Entry"]).parent, limit)
    except OSError as error:  # a full or read-only cache must not stop the run
        LOGGER.warning("context cache: could not evict old entries (%s)", error)
        status["Evicted"] = []
    return status


def _ensure_held(cache_dir, request: dict, build: Callable[[Path], None],
                 sources: Optional[dict]) -> dict:
    """:func:`ensure_entry` without the eviction: check or build under the key's lock, and
    hold the entry before letting the lock go."""
    cache_dir = Path(cache_dir).absolute()
    key = request_key(request)
    entry = cache_dir / key
    start = time.perf_counter()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{cache_dir}: cannot create the context cache here "
                          f"({error.strerror}); choose a writable --context-cache") from None
    with cache_lock(cache_dir / f"{key}.lock"):
        waited = time.perf_counter() - start
        reason = check_entry(entry, request) if entry.exists() else None
        if entry.exists() and reason is None:
            manifest = json.loads((entry / MANIFEST).read_text())
            LOGGER.info("context set %s: reusing %s", key, entry)
            hold(entry)
            return {"CacheKey": key, "Entry": str(entry), "Reused": True,
                    "BuiltBy": manifest.get("BuiltBy"), "SecondsWaiting": round(waited, 3),
                    "SecondsPreparing": round(time.perf_counter() - start, 3)}
        if reason is not None:
            LOGGER.warning("context set %s: not reusing %s: %s; rebuilding", key, entry, reason)
            shutil.rmtree(entry)
        for stale in cache_dir.glob(f".tmp-{key}-*"):  # left by a builder that died
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_dir / f".tmp-{key}-{socket.gethostname()}-{os.getpid()}"
        tmp.mkdir()
        try:
            built = time.perf_counter()
            build(tmp)
            files = {str(p.relative_to(tmp)): file_sha256(p)
                     for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {"Format": CACHE_FORMAT, "Key": key, "Request": request,
                        "Sources": sources or {}, "Files": files,
                        "BuiltBy": _who(), "BuiltAt": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "SecondsBuilding": round(time.perf_counter() - built, 3)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        LOGGER.info("context set %s: built %s in %.1f s", key, entry, manifest["SecondsBuilding"])
        hold(entry)
        return {"CacheKey": key, "Entry": str(entry), "Reused": False,
                "RebuiltBecause": reason, "BuiltBy": manifest["BuiltBy"],
                "SecondsWaiting": round(waited, 3),
                "SecondsPreparing": round(time.perf_counter() - start, 3)}


# ------------------------------------------------------------------------ the context pool
def pool_sources(pairs) -> dict:
    """Where each pair's files were read: subject -> paths (image first)."""
    return {p.subject: [str(f) for f in (p.image, *p.outputs)] for p in pairs}


def pool_request(spec, pairs, grid: Dict, template: str, template_file, sloppy: bool) -> dict:
    """What determines the pool's content: spec, model grid, template, and the selection (each
    pair's subject, the sha256 of its files and its dseg indices)."""
    spec_dict = spec.to_dict()
    return {
        "Format": CACHE_FORMAT,
        "Task": spec.task, "Degradation": spec.degradation, "Seed": spec.seed,
        "Structures": spec_dict["structures"],
        "Grid": {"shape": grid["shape"], "voxel_size_mm": grid["voxel_size_mm"]},
        "Template": template, "TemplateDataSHA256": image_digest(template_file),
        "Sloppy": bool(sloppy),
        "Pairs": [{"subject": p.subject, "image": {"sha256": file_sha256(p.image)},
                   "outputs": [{"sha256": file_sha256(o), "labels": v}
                               for o, v in zip(p.outputs, p.label_values)]}
                  for p in pairs],
    }


def build_pool(folder: Path, *, pairs, template_file, grid_reference, task: str,
               degradation: str, sloppy: bool, seed: int, plugin: dict, work_dir: Path):
    """Register and resample ``pairs`` with :func:`init_context_set_wf` (its nodes run through
    ``plugin``); a node fed by its outputnode copies each pair on the grid and the stacked pool
    into ``folder``."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from .workflows.base import init_context_set_wf

    subjects = [p.subject for p in pairs]
    context_wf = init_context_set_wf(pairs=pairs, subsets={"pool": subjects}, task=task,
                                     degradation=degradation, sloppy=sloppy, seed=seed)
    context_wf.inputs.inputnode.template_file = str(template_file)
    context_wf.inputs.inputnode.grid_reference = str(grid_reference)
    copy = pe.Node(niu.Function(function=copy_entry_files, output_names=[]),
                   name="copy_entry_files", overwrite=True)  # a new folder every build
    copy.inputs.folder = str(folder)
    copy.inputs.subjects = subjects
    copy.inputs.pool_name = POOL_FILE
    workflow = pe.Workflow(name="context_cache_build", base_dir=str(work_dir))
    workflow.connect([(context_wf, copy, [("outputnode.pool", "pool"),
                                          ("outputnode.pair_images", "pair_images"),
                                          ("outputnode.pair_outputs", "pair_outputs")])])
    workflow.config["execution"].update({"hash_method": "content", "crashfile_format": "txt",
                                         "crashdump_dir": str(Path(work_dir) / "crash"),
                                         "remove_unnecessary_outputs": False})
    workflow.run(plugin=plugin["plugin"], plugin_args=plugin.get("plugin_args", {}))


def copy_entry_files(folder, subjects, pair_images, pair_outputs, pool, pool_name):
    """Copy each pair on the grid (``pairs/sub-<label>_image.nii.gz``,
    ``pairs/sub-<label>_output-<index>.nii.gz``) and the stacked pool (``pool_name``) into the
    entry ``folder``. Runs as a Nipype Function node: self-contained."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    (folder / "pairs").mkdir(exist_ok=True)
    for subject, image, outputs in zip(subjects, pair_images, pair_outputs):
        shutil.copyfile(image, folder / "pairs" / f"sub-{subject}_image.nii.gz")
        for index, path in enumerate(outputs if isinstance(outputs, list) else [outputs]):
            shutil.copyfile(path, folder / "pairs" / f"sub-{subject}_output-{index}.nii.gz")
    shutil.copyfile(pool, folder / pool_name)
