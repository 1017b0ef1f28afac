"""Errors with the BIDS-App exit code they map to.

Codes follow the BIDS-Apps execution spec and sysexits: 1 failure, 16 validation failed,
18 filters selected nothing, 64 usage, 65 bad input data, 66 missing input, 73 cannot create
output. Every message names the offending file and how to fix it.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_VALIDATION = 16
EXIT_NOTHING_SELECTED = 18
EXIT_USAGE = 64
EXIT_BAD_INPUT = 65
EXIT_MISSING_INPUT = 66
EXIT_CANNOT_CREATE = 73


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
