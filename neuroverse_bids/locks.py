"""One live run per work folder: ``<work_dir>/neuroverse3d.lock``.

Two runs sharing a work folder overwrite each other's half-written node folders, so a run
holds an exclusive ``flock`` on the lock file for its whole life and writes who it is into it
(host, PID, start time, command). The kernel drops the lock when the process dies, however it
dies (``kill -9``, the out-of-memory killer), so a dead run's lock is simply taken over. Where
the file system refuses ``flock``, the recorded PID decides instead: a lock of this host whose
process is gone (or is another process reusing the PID) is taken over; a lock of another host
is respected.

A second run is refused with :class:`WorkDirLockedError` (exit code 75, ``EX_TEMPFAIL``:
try again when the other run finished, or choose another ``-w``).
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
from typing import Optional

from .errors import ExitCode
from .workflows.errors import NeuroverseError, OutputError

LOGGER = logging.getLogger("neuroverse3d")
LOCK_NAME = "neuroverse3d.lock"


class WorkDirLockedError(NeuroverseError):
    exit_code = ExitCode.LOCKED


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

    def _read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _flock(self, fd: int) -> Optional[bool]:
        """True: locked; False: another process holds it; None: no flock on this file system."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise

    def _refuse(self, holder: dict):
        raise WorkDirLockedError(
            f"{self.path.parent}: this work folder is in use by {_describe(holder)}; wait "
            f"until that run finished (or stop it), or choose another work folder with -w")

    def acquire(self):
        for _ in range(10):  # retries only when another run removed or replaced the file
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise OutputError(f"{self.path}: cannot create the work folder's lock file "
                                  f"({error.strerror}); choose a writable -w") from None
            locked = self._flock(fd) if sys.platform != "win32" else None
            if locked is False:
                holder = self._read_holder()
                os.close(fd)
                self._refuse(holder)
            if locked is None:
                holder = self._read_holder()
                same_host = holder.get("host") == socket.gethostname()
                if holder.get("pid") and not (same_host and not _pid_alive(
                        int(holder["pid"]), holder.get("process_start"))):
                    os.close(fd)
                    self._refuse(holder)
            try:  # the file we locked must still be the one at the path
                if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError
            except FileNotFoundError:
                os.close(fd)
                continue
            previous = self._read_holder()
            if previous.get("pid"):
                LOGGER.warning("%s: taking over the lock of %s, which is no longer running",
                               self.path.parent, _describe(previous))
            self.fd = fd
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
            os.ftruncate(self.fd, 0)  # an empty lock file is a free one, even without flock
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # drops the flock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
