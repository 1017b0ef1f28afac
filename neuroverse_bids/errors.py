"""Exit-code handling shared by the command-line programs."""
from __future__ import annotations

import sys

from .workflows.errors import EXIT_FAILURE, EXIT_OK, NeuroverseError

__all__ = ["EXIT_OK", "NeuroverseError", "run_with_exit_codes"]


def run_with_exit_codes(program: str, function, *args) -> int:
    """Call ``function(*args)``; turn known errors into a one-line message and an exit code."""
    from .model.checkpoint import CheckpointError

    try:
        return function(*args)
    except NeuroverseError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return error.exit_code
    except CheckpointError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # an unexpected failure: keep the traceback for the report
        import traceback

        traceback.print_exc()
        print(f"{program}: error: unexpected failure ({error!r})", file=sys.stderr)
        return EXIT_FAILURE
