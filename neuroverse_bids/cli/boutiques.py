"""A Boutiques descriptor (https://boutiques.github.io, schema 0.5) made from the parser.

``neuroverse3d --boutiques`` prints it. It is generated from the very ``argparse`` parser the
command uses, so it cannot drift from the options: one input per argument (its first long flag,
its type, choices, list-ness and help), the positional arguments first, in order.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .. import __version__
from ..model.exit_codes import ExitCode

#: arguments that only print something (or are the descriptor itself): not tool inputs
NOT_INPUTS = ("help", "version", "boutiques")
#: the documented exit codes of ``neuroverse3d`` (README, "Exit codes"); 0 is success

def _input_type(action: argparse.Action) -> dict:
    if action.nargs == 0:  # store_true, store_false, count
        return {"type": "Flag"}
    if action.type in (int, float) or getattr(action.type, "__name__", "") in (
            "positive_int", "positive_float"):
        return {"type": "Number",
                "integer": action.type is int or action.type.__name__ == "positive_int"}
    if action.type is Path or (action.metavar or "") in ("FILE", "CKPT", "DIR"):
        return {"type": "File"}
    return {"type": "String"}


def _input(action: argparse.Action) -> dict:
    positional = not action.option_strings
    value_key = f"[{action.dest.upper()}]"
    text = action.help or ""
    if "%(" in text:
        text = text % dict(vars(action), prog="neuroverse3d")
    entry = {"id": action.dest, "name": action.dest.replace("_", " "), "value-key": value_key,
             "optional": not (positional or action.required),
             "description": re.sub(r"\s+", " ", text)}
    entry.update(_input_type(action))
    if not positional:
        entry["command-line-flag"] = next(
            (s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
    if action.choices is not None:
        entry["value-choices"] = list(action.choices)
    if action.nargs != 0 and isinstance(action.default, (str, int, float)):
        entry["default-value"] = action.default
    if action.nargs in ("+", "*"):
        entry["list"] = True
        if action.nargs == "+":
            entry["min-list-entries"] = 1
    elif isinstance(action, argparse._AppendAction):  # --mask a --mask b: repeat the flag
        entry.update({"list": True, "list-separator": f" {entry['command-line-flag']} "})
    if isinstance(action, argparse._CountAction):  # -v -v: a flag in the descriptor
        entry["description"] += " (the descriptor passes it once)"
    return entry


def descriptor(parser: argparse.ArgumentParser) -> dict:
    """The Boutiques descriptor of ``parser``'s command line."""
    actions = [a for a in parser._actions if a.dest not in NOT_INPUTS
               and a.help is not argparse.SUPPRESS]
    actions.sort(key=lambda a: bool(a.option_strings))  # positional first (stable)
    inputs = [_input(a) for a in actions]
    output_dir = next(i for i in inputs if i["id"] == "output_dir")
    return {
        "name": parser.prog,
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": parser.description,
        "command-line": " ".join([parser.prog] + [i["value-key"] for i in inputs]),
        "inputs": inputs,
        "output-files": [{"id": "derivatives", "name": "BIDS derivatives",
                          "path-template": output_dir["value-key"],
                          "description": "the output folder: derivatives, reports, logs/"}],
        "tags": {"domain": ["neuroinformatics", "mri"], "bids-app": True},
        "error-codes": [{"code": int(code), "description": code.meaning}
                        for code in ExitCode if code != ExitCode.OK],
    }


class BoutiquesAction(argparse.Action):
    """``--boutiques``: print the descriptor of the parser it belongs to, then exit 0."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the Boutiques descriptor of this command line (JSON) and exit"):
        super().__init__(option_strings, dest="boutiques", default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(json.dumps(descriptor(parser), indent=2) + "\n")
        parser.exit(0)
