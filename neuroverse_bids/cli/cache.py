"""``neuroverse3d-cache list|prune|clear``: see and empty a context cache.

The cache is the one of an output folder (``OUTPUT_DIR/cache/context-sets``, the app's default)
or any folder given with ``--cache DIR`` (what the runs got as ``--context-cache DIR``). The
participant level keeps it under its size limit itself (``--context-cache-max-gb``); these
commands are for looking at it and for freeing space now. Entries a live run uses are never
removed (see :mod:`neuroverse_bids.context_cache_store`).

* ``list``: the entries, least recently used (first to be evicted) first: key, size, last use,
  whether a live run uses it, task and context subjects; ``--json`` for scripts.
* ``prune``: remove least recently used entries down to ``--max-gb`` (default: the limit the
  runs use, ``$NEUROVERSE3D_CONTEXT_CACHE_MAX_GB``, else 5 GB).
* ``clear``: remove every entry (or those given with ``--key``) that no live run uses.

Exit codes: 0 success, 64 usage error (e.g. an unknown ``--key``), 66 no cache there,
75 some entries were kept because a live run uses them (try again when it finished).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import __version__
from ..context_cache_store import (CACHE_FOLDER, GB, MAX_GB_VARIABLE, evict, list_entries,
                                   max_cache_bytes, remove_entry)
from ..errors import ExitCode, run_with_exit_codes
from ..workflows.errors import MissingInputError, NeuroverseError, UsageError
from .options import ExitCode64Parser


def build_parser() -> argparse.ArgumentParser:
    parser = ExitCode64Parser(prog="neuroverse3d-cache", description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=ExitCode64Parser)
    helps = {"list": "show the entries, least recently used first",
             "prune": "remove least recently used entries down to a size",
             "clear": "remove every entry no live run uses"}
    for name, text in helps.items():
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("output_dir", type=Path, nargs="?",
                             help="output folder of the runs (its cache/context-sets)")
        command.add_argument("--cache", "--context-cache", dest="cache", type=Path,
                             metavar="DIR", help="the cache folder itself (instead of output_dir)")
        if name == "list":
            command.add_argument("--json", action="store_true", help="print JSON")
        if name == "prune":
            command.add_argument("--max-gb", type=float, metavar="GB",
                                 help=f"target size (default: ${MAX_GB_VARIABLE}, else 5)")
        if name == "clear":
            command.add_argument("--key", action="append", metavar="KEY",
                                 help="remove only this entry (repeatable)")
    return parser


def cache_folder(args) -> Path:
    """The cache folder from ``output_dir`` or ``--cache`` (exactly one); exit 66 if absent."""
    if (args.output_dir is None) == (args.cache is None):
        raise UsageError("give the runs' output folder or --cache DIR (one of them)")
    folder = args.cache if args.cache is not None else args.output_dir / CACHE_FOLDER
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: no context cache here (a run's cache is "
                                f"OUTPUT_DIR/{CACHE_FOLDER}, or the --context-cache it was given)")
    return folder.absolute()


def _size(n: float) -> str:
    for unit, scale in (("GB", GB / 10), ("MB", 2 ** 20 / 10)):
        if n >= scale:
            return f"{n / (scale * 10):.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n / 1024:.1f} KB"


def _list(folder: Path, args) -> int:
    entries = list_entries(folder)
    total, limit = sum(e["Bytes"] for e in entries), max_cache_bytes(None)
    if args.json:
        print(json.dumps({"Cache": str(folder), "Bytes": total, "LimitBytes": limit,
                          "Entries": entries}, indent=2))
        return ExitCode.OK
    print(f"context cache {folder}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
          f"{_size(total)} (limit {_size(limit) if limit < float('inf') else 'none'}; "
          "least recently used first)")
    if entries:
        print(f"{'KEY':<22}{'SIZE':>10}  {'LAST USED':<17} {'IN USE':<7} {'TASK':<13} SUBJECTS")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["LastUsed"]))
        task = e["Task"] or ("incomplete" if not e["Complete"] else "?")
        print(f"{e['Key']:<22}{_size(e['Bytes']):>10}  {used:<17} "
              f"{'yes' if e['InUse'] else 'no':<7} {task:<13} {' '.join(e['Subjects'])}")
    return ExitCode.OK


def _kept(kept) -> int:
    if not kept:
        return ExitCode.OK
    raise NeuroverseError(f"kept {len(kept)} entr{'y' if len(kept) == 1 else 'ies'} in use by a "
                          f"live run or being built ({', '.join(kept)}); try again when it "
                          "finished", exit_code=ExitCode.LOCKED)


def _remove(folder: Path, args) -> int:
    entries = {e["Key"]: e for e in list_entries(folder)}
    unknown = sorted(set(args.key or []) - set(entries))
    if unknown:
        raise UsageError(f"{folder}: no entry {', '.join(unknown)} (neuroverse3d-cache list "
                         "shows the keys)")
    kept = []
    for key in args.key or sorted(entries):
        if remove_entry(folder, key):
            print(f"removed {key} ({_size(entries[key]['Bytes'])})")
        elif (folder / key).exists():  # else another process removed it meanwhile
            kept.append(key)
    if not args.key:  # lock files and half builds of keys without an entry (a dead builder)
        for key in {p.name.split(".")[0] or p.name.split("-")[1] for p in folder.iterdir()}:
            if key not in entries and not (folder / key).exists():
                remove_entry(folder, key)
    return _kept(kept)


def _prune(folder: Path, args) -> int:
    limit = max_cache_bytes(args.max_gb)
    sizes = {e["Key"]: e["Bytes"] for e in list_entries(folder)}
    for key in evict(folder, limit):
        print(f"removed {key} ({_size(sizes[key])}, least recently used)")
    left = list_entries(folder)
    if sum(e["Bytes"] for e in left) > limit:
        return _kept([e["Key"] for e in left if e["InUse"]] or ["?"])
    return ExitCode.OK


def run(args) -> int:
    folder = cache_folder(args)
    return {"list": _list, "clear": _remove, "prune": _prune}[args.command](folder, args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes("neuroverse3d-cache", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
