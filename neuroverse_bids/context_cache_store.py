"""The context cache's folder: locks, which entries live runs use, the size limit, eviction.

:mod:`.context_cache` builds and verifies entries (``<cache>/<key>/``); this module keeps the
folder's bookkeeping beside them::

    <cache>/<key>.lock    exclusive POSIX lock (:mod:`.locks`, honoured over NFS) while a
                          process builds, checks or removes the entry
    <cache>/<key>.use     shared POSIX lock of every live run that reads the entry; its mtime is
                          the entry's last use (least recently used entries are evicted first)

A run takes its ``.use`` lock under the ``.lock`` (:func:`hold`, from
:func:`.context_cache.ensure_entry`) and keeps it until :func:`release_entry`. An entry is
removed only with both locks free, renamed away first so that it disappears at once. The size
limit (:func:`max_cache_bytes`) is ``--context-cache-max-gb``, else
``$NEUROVERSE3D_CONTEXT_CACHE_MAX_GB``, else :data:`DEFAULT_MAX_GB`. Without POSIX locks (some
network filesystems) the ``.lock`` is a folder and an entry used in the last
:data:`STALE_LOCK_SECONDS` counts as in use. ``neuroverse3d-cache`` (:mod:`.cli.cache`) lists,
prunes and clears a cache.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .locks import NoFileLocks, lock_file, same_file, unlock_file
from .workflows.errors import UsageError

LOGGER = logging.getLogger("neuroverse3d")
MANIFEST = "manifest.json"
#: the context cache under the output folder (``--context-cache`` elsewhere); .bidsignore'd
CACHE_FOLDER = Path("cache") / "context-sets"
#: without POSIX locks (some network filesystems): a lock folder older than this is stale (s)
STALE_LOCK_SECONDS = 6 * 3600
#: the cache's size limit (GB of 1024^3 bytes) unless the option or the variable says otherwise
DEFAULT_MAX_GB = 5.0
MAX_GB_VARIABLE = "NEUROVERSE3D_CONTEXT_CACHE_MAX_GB"
GB = 1024 ** 3
#: ``.use`` files this process holds: path -> [fd (None without POSIX locks), count]. Closing
#: *any* descriptor of a file drops the process's locks on it (:mod:`.locks`), so the process
#: never opens a file it holds a second time.
_HELD: Dict[str, list] = {}


@contextmanager
def cache_lock(path: Path, poll: float = 1.0, blocking: bool = True):
    """Exclusive lock on ``path``: a POSIX record lock (works across hosts on NFS), else a
    lock folder created atomically (filesystems without locks). Yields True, or False when
    ``blocking`` is off and another process holds it. A lock file removed or replaced while
    waiting (its entry was evicted) is opened again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            locked = lock_file(fd, blocking=False)
        except NoFileLocks:
            os.close(fd)
            with _folder_lock(path.with_name(path.name + ".d"), poll, blocking) as locked:
                yield locked
            return
        if not locked:
            if not blocking:
                os.close(fd)
                yield False
                return
            LOGGER.info("waiting for %s: another process is building this context set", path)
            try:
                lock_file(fd)
            except BaseException:
                os.close(fd)
                raise
        if same_file(path, fd):
            break
        os.close(fd)
    try:
        yield True
    finally:
        unlock_file(fd)
        os.close(fd)


@contextmanager
def _folder_lock(folder: Path, poll: float, blocking: bool = True):
    while True:
        try:
            folder.mkdir()
            break
        except FileExistsError:
            try:
                age = time.time() - folder.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > STALE_LOCK_SECONDS:
                LOGGER.warning("removing the stale lock %s (%.0f s old)", folder, age)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if not blocking:
                yield False
                return
            time.sleep(poll)
    try:
        yield True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def max_cache_bytes(max_gb: Optional[float] = None) -> float:
    """The size limit in bytes: ``max_gb`` (``--context-cache-max-gb``), else
    ``$NEUROVERSE3D_CONTEXT_CACHE_MAX_GB``, else :data:`DEFAULT_MAX_GB`; ``inf``: no limit,
    0: keep only the entries in use. Anything else is a usage error (exit 64)."""
    where = "--context-cache-max-gb"
    if max_gb is None:
        where, max_gb = MAX_GB_VARIABLE, os.environ.get(MAX_GB_VARIABLE) or DEFAULT_MAX_GB
    try:
        value = float(max_gb)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise UsageError(f"{where}: expected a size in GB >= 0 (or inf), got {max_gb!r}")
    return value * GB


def _use_file(entry) -> Path:
    entry = Path(entry).absolute()  # one spelling per file: _HELD is keyed by it
    return entry.parent / f"{entry.name}.use"


def hold(entry: Path):
    """Mark ``entry`` in use by this process (a shared lock on its ``.use`` file, whose mtime
    is the last use). Called under the key's lock, so no evictor sees it unused meanwhile."""
    use = _use_file(entry)
    held = _HELD.get(str(use))
    if held is None:
        fd = os.open(use, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            lock_file(fd, shared=True)
        except NoFileLocks:
            os.close(fd)
            fd = None  # no locks: the recent mtime keeps the entry (see in_use)
        except BaseException:
            os.close(fd)
            raise
        held = _HELD[str(use)] = [fd, 0]
    held[1] += 1
    os.utime(use)


def release_entry(entry) -> None:
    """This process no longer reads ``entry`` (the last of its holds drops the lock)."""
    if entry is None:
        return
    use = _use_file(entry)
    held = _HELD.get(str(use))
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[str(use)]
        try:
            os.utime(use)
        except OSError:
            pass
        if held[0] is not None:
            os.close(held[0])  # drops the shared lock


def in_use(cache_dir: Path, key: str) -> bool:
    """Whether a live process (this one included) holds the entry ``key``."""
    use = _use_file(Path(cache_dir) / key)
    if str(use) in _HELD:
        return True
    try:
        fd = os.open(use, os.O_RDWR)
    except FileNotFoundError:
        return False
    except PermissionError:  # another user's cache: cannot tell, so never remove it
        return True
    try:
        if not lock_file(fd, blocking=False):
            return True
        unlock_file(fd)
        return False
    except NoFileLocks:
        return time.time() - os.fstat(fd).st_mtime < STALE_LOCK_SECONDS
    except OSError:  # cannot tell, so never remove it
        return True
    finally:
        os.close(fd)


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def list_entries(cache_dir) -> List[dict]:
    """The entries under ``cache_dir``, least recently used first: ``Key``, ``Entry``,
    ``Bytes``, ``LastUsed`` (epoch seconds), ``InUse``, ``Complete`` (has a manifest) and,
    from the manifest, ``BuiltAt``, ``Task``, ``Template`` and ``Subjects``."""
    cache_dir = Path(cache_dir).absolute()
    entries = []
    # entries are named by their key (hex); ".tmp-*" builds and "<key>.lock.d" locks are not
    for entry in sorted(p for p in cache_dir.iterdir() if p.is_dir() and "." not in p.name):
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = None
        use = _use_file(entry)
        stamp = use if use.exists() else entry / MANIFEST if manifest else entry
        request = (manifest or {}).get("Request", {})
        try:
            size, last_used = _tree_bytes(entry), stamp.stat().st_mtime
        except FileNotFoundError:  # removed meanwhile by another process
            continue
        entries.append({
            "Key": entry.name, "Entry": str(entry), "Bytes": size, "LastUsed": last_used,
            "InUse": in_use(cache_dir, entry.name), "Complete": manifest is not None,
            "BuiltAt": (manifest or {}).get("BuiltAt"), "Task": request.get("Task"),
            "Template": request.get("Template"),
            "Subjects": [p.get("subject") for p in request.get("Pairs", [])]})
    return sorted(entries, key=lambda e: (e["LastUsed"], e["Key"]))


def remove_entry(cache_dir, key: str) -> bool:
    """Remove the entry ``key`` (and its lock files) unless a process builds, checks or
    uses it; True when this call removed it."""
    cache_dir = Path(cache_dir).absolute()
    lock = cache_dir / f"{key}.lock"
    if str(_use_file(cache_dir / key)) in _HELD:
        return False
    with cache_lock(lock, blocking=False) as locked:
        if not locked or in_use(cache_dir, key):
            return False
        entry = cache_dir / key
        removed = entry.exists()  # False: another process removed it first
        if removed:  # renamed first: it disappears at once, never half-deleted
            trash = cache_dir / f".tmp-{key}-evicted-{socket.gethostname()}-{os.getpid()}"
            os.rename(entry, trash)
        for stale in cache_dir.glob(f".tmp-{key}-*"):  # this one, and any a dead builder left
            shutil.rmtree(stale, ignore_errors=True)
        for name in (f"{key}.use", f"{key}.lock"):  # waiters reopen a replaced lock file
            (cache_dir / name).unlink(missing_ok=True)
    return removed


def evict(cache_dir, max_bytes: float, keep: Iterable[str] = ()) -> List[str]:
    """Remove the least recently used entries not in use (nor in ``keep``) until the cache
    holds at most ``max_bytes``; returns the removed keys."""
    entries = list_entries(cache_dir)
    total = sum(e["Bytes"] for e in entries)
    removed = []
    for entry in entries:
        if total <= max_bytes:
            break
        if entry["Key"] not in keep and not entry["InUse"] and \
                remove_entry(cache_dir, entry["Key"]):
            total -= entry["Bytes"]
            removed.append(entry["Key"])
            LOGGER.info("context cache: evicted %s (%.1f MB, least recently used)",
                        entry["Key"], entry["Bytes"] / 2 ** 20)
    if total > max_bytes:
        LOGGER.warning("context cache %s holds %.2f GB, over its limit of %.2f GB: the rest is "
                       "in use or being built", cache_dir, total / GB, max_bytes / GB)
    return removed


