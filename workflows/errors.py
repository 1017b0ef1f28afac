"""Errors with the BIDS-App exit code they map to.

Codes follow the BIDS-Apps execution spec and sysexits: 1 failure, 16 validation failed,
18 filters selected nothing, 64 usage, 65 bad input data, 66 missing input, 73 cannot create
output (a full disk included), 75 work folder in use; 130/143 a run stopped by SIGINT/SIGTERM
(the shell's 128 + signal number). Every message names the offending file and how to fix it.
"""
from __future__ import annotations

import errno
import os
import shutil
from typing import Optional

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_VALIDATION = 16
EXIT_NOTHING_SELECTED = 18
EXIT_USAGE = 64
EXIT_BAD_INPUT = 65
EXIT_MISSING_INPUT = 66
EXIT_CANNOT_CREATE = 73
#: the work folder is held by another live run (sysexits' EX_TEMPFAIL: retry later)
EXIT_LOCKED = 75
#: stopped by Ctrl-C (SIGINT) / by SIGTERM (SLURM's time limit, ``kill``): 128 + signal number
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
#: errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class NeuroverseError(Exception):
    """An error the user can fix; ``exit_code`` is what the command line returns."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(NeuroverseError):
    exit_code = EXIT_USAGE


class BadInputError(NeuroverseError):
    exit_code = EXIT_BAD_INPUT


class MissingInputError(NeuroverseError):
    exit_code = EXIT_MISSING_INPUT


class OutputError(NeuroverseError):
    exit_code = EXIT_CANNOT_CREATE


class ValidationError(NeuroverseError):
    exit_code = EXIT_VALIDATION


class NothingSelectedError(NeuroverseError):
    exit_code = EXIT_NOTHING_SELECTED


class DiskFullError(OutputError):
    """No space left (or quota exceeded) where a file was being written (exit 73)."""


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def free_bytes(path) -> Optional[int]:
    """Free space for unprivileged writes on the file system of ``path`` (or of its nearest
    existing parent); None when it cannot be measured."""
    path = os.path.abspath(os.fspath(path))
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full_error(path, needed: Optional[int] = None,
                    reason: str = "No space left on device") -> DiskFullError:
    """The one-line error for a full disk (or quota: ``reason``) at ``path``: what is free
    there, what the file needed (when known), and the fix."""
    free = free_bytes(path)
    free_text = "unknown" if free is None else _size(free)
    need_text = f", about {_size(needed)} needed" if needed else ""
    return DiskFullError(f"{path}: cannot write here: {reason} ({free_text} free{need_text}); "
                         "free space there or choose a folder on another disk, then rerun the "
                         "same command (finished steps are reused)")
