"""``neuroverse3d bids_dir output_dir {participant,group}``: the BIDS-App entry point.

Everything that can be checked before the workflow runs is checked first (paths, BIDS
validity, participants, context pairs, model, template), so bad input fails in seconds with a
clear message and the exit code of the BIDS-Apps spec, and nothing is written to ``bids_dir``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from ..errors import run_with_exit_codes
from ..workflows.errors import MissingInputError, OutputError, UsageError
from .parser import build_parser

LOGGER = logging.getLogger("neuroverse3d")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path):
    """Refuse layouts that would write into the input; make sure the outputs can be written."""
    if not bids_dir.is_dir():
        raise MissingInputError(f"{bids_dir}: the BIDS dataset folder does not exist")
    if output_dir == bids_dir or _inside(bids_dir, output_dir):
        raise UsageError(f"output_dir {output_dir} must not be the input dataset {bids_dir} or "
                         "contain it; choose e.g. <bids_dir>/../derivatives/neuroverse3d")
    if _inside(output_dir, bids_dir) and "derivatives" not in output_dir.relative_to(bids_dir).parts:
        raise UsageError(f"output_dir {output_dir} is inside the input dataset {bids_dir}; only "
                         "<bids_dir>/derivatives/... is allowed there")
    if _inside(work_dir, bids_dir):
        raise UsageError(f"work dir {work_dir} is inside the input dataset {bids_dir}; the input "
                         "is never written: choose a work dir outside it with -w")
    for folder in (output_dir, work_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise OutputError(f"{folder}: cannot write here ({error.strerror}); choose a writable "
                              "folder or fix its permissions") from None


def setup_logging(verbose_count: int):
    level = max(logging.WARNING - 10 * verbose_count, logging.DEBUG)
    logging.basicConfig(level=logging.INFO if verbose_count else logging.WARNING,
                        format="%(asctime)s | %(name)s | %(levelname)s | %(message)s")
    LOGGER.setLevel(min(level, logging.INFO))
    from nipype import logging as nlogging

    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nlogging.getLogger(name).setLevel(level if verbose_count > 1 else logging.WARNING)


def plugin_settings(args) -> dict:
    """Nipype plugin and its arguments: ``--use-plugin`` file, else MultiProc / Linear."""
    if args.use_plugin is not None:
        path = args.use_plugin
        if not path.is_file():
            raise UsageError(f"{path}: plugin settings file not found")
        text = path.read_text()
        try:
            import yaml

            settings = yaml.safe_load(text)
        except ImportError:
            settings = json.loads(text)
        except Exception as error:
            raise UsageError(f"{path}: cannot parse the plugin settings ({error})") from None
        if not isinstance(settings, dict) or "plugin" not in settings:
            raise UsageError(f"{path}: needs a 'plugin' key (and optionally 'plugin_args')")
        settings.setdefault("plugin_args", {})
        return settings
    nprocs = args.nprocs or os.cpu_count() or 1
    if nprocs == 1:
        return {"plugin": "Linear", "plugin_args": {}}
    # forkserver, not fork: workers must not inherit the OpenMP thread pool that loading the
    # model started in this process (torch in a forked child then deadlocks)
    plugin_args = {"n_procs": nprocs, "raise_insufficient": False, "mp_context": "forkserver"}
    if args.mem_gb:
        plugin_args["memory_gb"] = args.mem_gb
    return {"plugin": "MultiProc", "plugin_args": plugin_args}


def run(args) -> int:
    setup_logging(args.verbose_count)
    bids_dir = args.bids_dir.resolve()
    output_dir = args.output_dir.resolve()
    work_dir = (args.work_dir or Path("work")).resolve()
    check_paths(bids_dir, output_dir, work_dir)
    from ..logs import setup_run_logging

    setup_run_logging(output_dir, args)
    if args.analysis_level == "group":
        from .group import run_group

        return run_group(bids_dir, output_dir, args)

    from .participant import plan_participant_run, run_workflow

    plan = plan_participant_run(args, bids_dir, output_dir, work_dir)
    return run_workflow(plan, plugin_settings(args), args)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_with_exit_codes("neuroverse3d", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
