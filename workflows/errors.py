"""Errors with the exit code they map to (:class:`~..model.exit_codes.ExitCode`).

Every message names the offending file and how to fix it.
"""
from __future__ import annotations

import errno
import os
import shutil
from typing import Optional

from ..model.exit_codes import ExitCode  # noqa: F401  (re-exported for the app)

#: errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class NeuroverseError(Exception):
    """An error the user can fix; ``exit_code`` is what the command line returns."""

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, exit_code: int = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(NeuroverseError):
    exit_code = ExitCode.USAGE


class BadInputError(NeuroverseError):
    exit_code = ExitCode.BAD_INPUT


class MissingInputError(NeuroverseError):
    exit_code = ExitCode.MISSING_INPUT


class OutputError(NeuroverseError):
    exit_code = ExitCode.CANNOT_CREATE


class ValidationError(NeuroverseError):
    exit_code = ExitCode.VALIDATION


class NothingSelectedError(NeuroverseError):
    exit_code = ExitCode.NOTHING_SELECTED


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
