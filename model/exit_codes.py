"""The exit codes of every command of the project, in one enumeration.

They follow the BIDS-Apps execution spec and BSD sysexits (``man 3 sysexits``); a run stopped by
a signal exits with the shell's 128 + signal number. Each member's docstring-like description
(:attr:`ExitCode.meaning`) is what ``--help`` texts, the Boutiques descriptor and the README
say; nothing else spells a code as a number.
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a command returns, with its documented meaning (``ExitCode.USAGE.meaning``)."""

    OK = 0
    FAILURE = 1
    VALIDATION = 16
    NOTHING_SELECTED = 18
    USAGE = 64
    BAD_INPUT = 65
    MISSING_INPUT = 66
    CANNOT_CREATE = 73
    LOCKED = 75
    SIGINT = 130
    SIGTERM = 143

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "failure (a node crashed: see the crash summaries and logs/)",
    ExitCode.VALIDATION: "BIDS validation failed",
    ExitCode.NOTHING_SELECTED: "the filters selected nothing",
    ExitCode.USAGE: "usage error",
    ExitCode.BAD_INPUT: "bad input data",
    ExitCode.MISSING_INPUT: "missing input",
    ExitCode.CANNOT_CREATE: "cannot create output (including a full disk)",
    ExitCode.LOCKED: "the work folder is in use by a live run (retry later: sysexits' TEMPFAIL)",
    ExitCode.SIGINT: "interrupted (SIGINT, Ctrl-C); the same command resumes",
    ExitCode.SIGTERM: "terminated (SIGTERM, e.g. a scheduler's time limit); the same command "
                      "resumes",
}
