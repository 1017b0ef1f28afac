"""Exit-code handling shared by the command-line programs."""
from __future__ import annotations

import sys

from .workflows.errors import EXIT_FAILURE, EXIT_OK, NeuroverseError  # noqa: F401

__all__ = ["EXIT_OK", "EXIT_LOCKED", "NeuroverseError", "run_with_exit_codes"]

#: the work folder is held by another live run (sysexits' EX_TEMPFAIL: retry later)
EXIT_LOCKED = 75


def run_with_exit_codes(program: str, function, *args) -> int:
    """Call ``function(*args)``; turn known errors into a one-line message and an exit code.

    Errors the user can fix carry an integer ``exit_code`` (NeuroverseError, CheckpointError,
    MemoryBudgetError); anything else is an unexpected failure (exit 1, traceback kept).
    """
    try:
        return function(*args)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        code = getattr(error, "exit_code", None)
        if isinstance(code, int):
            print(f"{program}: error: {error}", file=sys.stderr)
            return code
        import traceback

        traceback.print_exc()
        print(f"{program}: error: unexpected failure ({error!r})", file=sys.stderr)
        return EXIT_FAILURE
