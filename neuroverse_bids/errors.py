"""Exit-code handling shared by the command-line programs: known errors, a full disk, and
SIGINT/SIGTERM each become one line on stderr and the exit code of the BIDS-Apps spec."""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

from .workflows.errors import DISK_FULL_ERRNOS, ExitCode, NeuroverseError, disk_full_error

__all__ = ["ExitCode", "NeuroverseError", "RunInterrupted", "RunStopped", "stop_on_signals",
           "run_with_exit_codes"]

#: what the one line calls each signal
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)",
                signal.SIGTERM: "SIGTERM (a job's time limit, or kill)"}


class RunInterrupted(KeyboardInterrupt):
    """Raised in the main thread by :func:`stop_on_signals` for SIGINT or SIGTERM.

    A ``KeyboardInterrupt`` (not an ``Exception``), so that Nipype's ``except Exception`` around
    a node does not take it for the node's failure; ``exit_code`` is 128 + the signal number.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum  # ExitCode.SIGINT or ExitCode.SIGTERM


class RunStopped(NeuroverseError):
    """A run stopped by a signal, with what it kept and how to resume (exit 130 or 143); printed
    without the ``error:`` prefix."""


@contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise :class:`RunInterrupted` in the main thread while the block runs
    (SIGTERM's default would end the process with no message and no cleanup); a second signal
    during the cleanup ends the process at once. Restores the previous handlers; does nothing
    outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if raised:  # the user insists: no more cleanup
            os._exit(128 + signum)
        raised.append(signum)
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNAL_NAMES}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _interrupted_code(error: KeyboardInterrupt) -> int:
    return getattr(error, "exit_code", ExitCode.SIGINT)


def run_with_exit_codes(program: str, function, *args) -> int:
    """Call ``function(*args)``; turn known errors into a one-line message and an exit code.

    Errors the user can fix carry an integer ``exit_code`` (NeuroverseError, CheckpointError,
    MemoryBudgetError); a full disk (``ENOSPC``/``EDQUOT``) anywhere is exit 73 with the path and
    the free space; Ctrl-C is exit 130 (SIGTERM 143 where :func:`stop_on_signals` was used);
    anything else is an unexpected failure (exit 1, traceback kept).
    """
    try:
        return function(*args)
    except KeyboardInterrupt as error:
        code = _interrupted_code(error)
        print(f"{program}: interrupted by "
              f"{SIGNAL_NAMES.get(code - 128, f'signal {code - 128}')}", file=sys.stderr)
        return code
    except Exception as error:
        code = getattr(error, "exit_code", None)
        if isinstance(code, int):
            prefix = "" if isinstance(error, RunStopped) else "error: "
            print(f"{program}: {prefix}{error}", file=sys.stderr)
            return code
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            full = disk_full_error(error.filename or os.getcwd(), reason=error.strerror)
            print(f"{program}: error: {full}", file=sys.stderr)
            return full.exit_code
        return _unexpected(program, error)


def _unexpected(program: str, error: BaseException) -> int:
    import traceback

    traceback.print_exc()
    print(f"{program}: error: unexpected failure ({error!r})", file=sys.stderr)
    return ExitCode.FAILURE
