"""File locks, and one live run per work folder (``<work_dir>/neuroverse3d.lock``).

**The lock primitive** (:func:`lock_file`, :func:`unlock_file`, :func:`same_file`): a POSIX
record lock (``fcntl.lockf``) on the whole file open as a descriptor, shared (many readers) or
exclusive (one holder), waiting for other processes (blocking) or answering at once
(non-blocking). POSIX locks are honoured across hosts on NFS (the network lock manager), and
the kernel drops them when their process dies, however it dies (``kill -9``, the out-of-memory
killer). They belong to the process, not to the descriptor, which has two consequences every
caller keeps in mind:

* a process never conflicts with itself: two locks it takes on one file both succeed, so it
  keeps its own record of what it holds;
* closing *any* descriptor of the file drops all of the process's locks on it, so a holder
  reads and writes its lock file through the locked descriptor only, and never opens it again.

A lock lasts until :func:`unlock_file` or the descriptor's close. Where the file system (or the
platform) has no POSIX locks, :func:`lock_file` raises :class:`NoFileLocks` and the caller falls
back on something else: the work folder on the recorded PID (below), the context cache on lock
folders (:mod:`.context_cache_store`). A lock file that another process may remove or replace
is checked with :func:`same_file` once locked.

**The work folder.** Two runs sharing a work folder overwrite each other's half-written node
folders, so a run holds an exclusive lock on ``neuroverse3d.lock`` for its whole life and
writes who it is into it (host, PID, start time, command); a dead run's lock is simply taken
over. Where the file system has no locks, the recorded PID decides instead: a lock of this host
whose process is gone (or is another process reusing the PID) is taken over; a lock of another
host is respected. A second run is refused with :class:`WorkDirLockedError` (exit code 75,
``EX_TEMPFAIL``: try again when the other run finished, or choose another ``-w``).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Dict, Optional

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks
    fcntl = None

from .errors import ExitCode
from .workflows.errors import NeuroverseError, OutputError

LOGGER = logging.getLogger("neuroverse3d")
LOCK_NAME = "neuroverse3d.lock"
#: what ``fcntl.lockf`` answers on a file system without POSIX locks
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
#: what it answers when another process holds a conflicting lock (non-blocking)
_HELD_ELSEWHERE = (errno.EAGAIN, errno.EACCES)


# -------------------------------------------------------------------------- the primitive
class NoFileLocks(OSError):
    """The file system (or the platform) has no POSIX locks."""


def lock_file(fd: int, *, shared: bool = False, blocking: bool = True) -> bool:
    """Lock the whole file open as ``fd``: shared (``fd`` open for reading) or exclusive
    (``fd`` open for writing).

    True: this process holds the lock until :func:`unlock_file` or the descriptor's close.
    False: another process holds a conflicting lock (only when not ``blocking``; blocking
    waits for it to go). Raises :class:`NoFileLocks` where there are no POSIX locks.
    """
    if fcntl is None:
        raise NoFileLocks(errno.ENOSYS, "no POSIX file locks on this platform")
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.lockf(fd, operation)
    except OSError as error:
        if error.errno in _NO_LOCKS:
            raise NoFileLocks(error.errno, error.strerror) from None
        if not blocking and error.errno in _HELD_ELSEWHERE:
            return False
        raise
    return True


def unlock_file(fd: int) -> None:
    """Drop this process's lock on the file open as ``fd`` (the descriptor stays open)."""
    if fcntl is not None:
        fcntl.lockf(fd, fcntl.LOCK_UN)


def same_file(path, fd: int) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not removed or replaced meanwhile)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------ the work folder
class WorkDirLockedError(NeuroverseError):
    exit_code = ExitCode.LOCKED


#: work folders this process holds: real path of the lock file -> its :class:`WorkDirLock`
#: (a second lock of a held folder is refused here, before its file is opened)
_HELD: Dict[str, "WorkDirLock"] = {}


def _process_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), to tell PID reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    now = _process_start(pid)
    return start is None or now is None or now == start


def _describe(holder: dict) -> str:
    return (f"run {holder.get('run_id', '?')} started {holder.get('started', '?')} on host "
            f"{holder.get('host', '?')} as PID {holder.get('pid', '?')}")


class WorkDirLock:
    """``with WorkDirLock(work_dir, run_id): ...`` holds the work folder for one run."""

    def __init__(self, work_dir, run_id: str = ""):
        self.path = Path(work_dir) / LOCK_NAME
        self.run_id = run_id
        self.fd: Optional[int] = None
        self._key = os.path.realpath(self.path)  # this lock's entry in _HELD

    @staticmethod
    def _read_holder(fd: int) -> dict:
        """Who holds the lock, read through ``fd`` (opening the file again would drop a lock
        this process holds on it)."""
        try:
            return json.loads(os.pread(fd, os.fstat(fd).st_size, 0).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def _lock(self, fd: int) -> Optional[bool]:
        """True: locked; False: another process holds it; None: no locks on this file system."""
        try:
            return lock_file(fd, blocking=False)
        except NoFileLocks:
            return None

    def _refuse(self, holder: dict):
        raise WorkDirLockedError(
            f"{self.path.parent}: this work folder is in use by {_describe(holder)}; wait "
            f"until that run finished (or stop it), or choose another work folder with -w")

    def acquire(self):
        if self._key in _HELD:  # this process's own run: POSIX locks would not refuse it
            self._refuse(self._read_holder(_HELD[self._key].fd))
        for _ in range(10):  # retries only when another run removed or replaced the file
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise OutputError(f"{self.path}: cannot create the work folder's lock file "
                                  f"({error.strerror}); choose a writable -w") from None
            locked = self._lock(fd)
            if locked is False:
                holder = self._read_holder(fd)
                os.close(fd)
                self._refuse(holder)
            if locked is None:
                holder = self._read_holder(fd)
                same_host = holder.get("host") == socket.gethostname()
                if holder.get("pid") and not (same_host and not _pid_alive(
                        int(holder["pid"]), holder.get("process_start"))):
                    os.close(fd)
                    self._refuse(holder)
            if not same_file(self.path, fd):  # another run removed or replaced it meanwhile
                os.close(fd)
                continue
            previous = self._read_holder(fd)
            if previous.get("pid"):
                LOGGER.warning("%s: taking over the lock of %s, which is no longer running",
                               self.path.parent, _describe(previous))
            self.fd = fd
            _HELD[self._key] = self
            self._write_holder()
            return self
        raise WorkDirLockedError(f"{self.path}: could not take the lock; another run keeps "
                                 "replacing it")

    def _write_holder(self):
        holder = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                  "process_start": _process_start(os.getpid()),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": sys.argv}
        data = (json.dumps(holder, indent=1) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def release(self):
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty lock file is a free one, even without locks
            self.path.unlink()
        except OSError:
            pass
        if _HELD.get(self._key) is self:
            del _HELD[self._key]
        os.close(self.fd)  # drops the lock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
