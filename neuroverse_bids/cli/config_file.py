"""``--config-file FILE``: rerun with the arguments a run saved in ``logs/``.

Every run saves ``<output_dir>/logs/neuroverse3d_<run id>_config.json`` (see ``logs.py``); its
``Arguments`` become the parser's defaults, so the flags given on the command line override
them and the positional arguments may be left out. Switches that were on in the saved run
(e.g. ``--sloppy``) stay on; edit the file to turn them off.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from ..workflows.errors import BadInputError, MissingInputError

#: saved arguments that describe how the earlier run was called, not what it computed
NOT_RESTORED = ("config_file", "verbose_count", "boutiques", "reports_only")


def saved_arguments(argv) -> Optional[dict]:
    """The ``Arguments`` of the file given with ``--config-file`` in ``argv``, if any."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config-file", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config_file is None:
        return None
    path = known.config_file
    if not path.is_file():
        raise MissingInputError(f"{path}: configuration file not found; use one that a run "
                                "saved as <output_dir>/logs/neuroverse3d_<run id>_config.json")
    try:
        arguments = json.loads(path.read_text())["Arguments"]
        if not isinstance(arguments, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BadInputError(f"{path}: not a neuroverse3d run configuration (a JSON object with "
                            "'Arguments', as saved in <output_dir>/logs/)") from None
    return arguments


def apply_saved_arguments(parser: argparse.ArgumentParser, saved: dict) -> dict:
    """Make ``saved`` the defaults of ``parser``; positional arguments become optional.

    Returns the saved values of ``append`` options (``--mask``): argparse would add the given
    values to a list default, so :func:`fill_appended` sets them after parsing instead.
    """
    actions = {}
    for action in parser._actions:  # several options may share a dest (--mem, --mem-gb)
        actions.setdefault(action.dest, []).append(action)
    unknown = sorted(set(saved) - set(actions) - set(NOT_RESTORED))
    if unknown:
        print(f"{parser.prog}: warning: the configuration file has arguments this version does "
              f"not know, ignored: {', '.join(unknown)}", file=sys.stderr)
    appended = {}
    for dest, value in saved.items():
        if dest not in actions or dest in NOT_RESTORED or value is None:
            continue
        for action in actions[dest]:
            if isinstance(action, argparse._AppendAction):
                appended[dest] = value
                continue
            if not action.option_strings:  # positional
                action.nargs, action.required = "?", False
            action.default = value
    return appended


def fill_appended(args, appended: dict):
    for dest, value in appended.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, list(value))
    return args
