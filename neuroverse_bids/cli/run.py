"""``neuroverse3d bids_dir output_dir {participant,group}``: the BIDS-App entry point.

Everything that can be checked before the workflow runs is checked first (paths, BIDS
validity, participants, context pairs, model, template), so bad input fails in seconds with a
clear message and the exit code of the BIDS-Apps spec, and nothing is written to ``bids_dir``.
A participant run holds its work folder for its whole life (``locks.py``: a second run on it
exits 75, having created nothing); the output folder is made only once the lock is held.
SIGINT and SIGTERM stop a run with one line (exit 130/143) that says what is kept and the
command that resumes it. ``--reports-only`` only renders the reports again; ``--config-file``
makes a saved run's arguments the defaults (``config_file.py``). ``--help``, ``--version`` and
usage errors import nothing heavy (no torch, nibabel or Nipype: see ``parser.py``).
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from ..config import ExecutionConfig, RunConfig
from ..errors import RunStopped, SIGNAL_NAMES, run_with_exit_codes, stop_on_signals
from ..logs import new_run_id, setup_console, setup_run_logging
from ..workflows.errors import MissingInputError, NeuroverseError, OutputError, UsageError
from .config_file import apply_saved_arguments, fill_appended, saved_arguments
from .parser import build_parser

LOGGER = logging.getLogger("neuroverse3d")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path):
    """Refuse layouts that would write into the input. Creates nothing (see :func:`writable`)."""
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


def writable(folder: Path) -> List[Path]:
    """Create ``folder`` (with its parents) and check that a file can be written there (else
    exit 73); returns the folders it created, outermost first, for :func:`remove_created`."""
    created = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(f"{folder}: cannot write here ({error.strerror}); choose a writable "
                          "folder or fix its permissions") from None
    return created


def remove_created(created: List[Path]):
    """Remove the folders :func:`writable` created, innermost first, if they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def seed_everything(seed: int):
    """``--random-seed``: Python's, NumPy's and PyTorch's global generators of this process."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def plugin_settings(config: RunConfig) -> dict:
    """Nipype plugin and its arguments: ``--use-plugin`` file, else MultiProc / Linear.

    MultiProc runs as ``SafeMultiProc`` (``execution.py``): its workers die with this process
    and log to the run's file. Every workflow of the run (the context-set build included)
    polls its nodes every 0.1 s instead of Nipype's 2 s: a rerun's cached nodes then take
    milliseconds each, not seconds.
    """
    from nipype import config as nipype_config

    from ..execution import register_plugin
    from ..logs import current_log_file

    nipype_config.set("execution", "poll_sleep_duration", "0.1")

    nipype = config.nipype
    if nipype.use_plugin is not None:
        path = nipype.use_plugin
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
    else:
        nprocs = nipype.nprocs or os.cpu_count() or 1
        if nprocs == 1:
            return {"plugin": "Linear", "plugin_args": {}}
        # forkserver, not fork: workers must not inherit the OpenMP thread pool that loading
        # the model started in this process (torch in a forked child then deadlocks)
        settings = {"plugin": "MultiProc", "plugin_args": {
            "n_procs": nprocs, "raise_insufficient": False, "mp_context": "forkserver"}}
        if config.inference.mem_gb:
            settings["plugin_args"]["memory_gb"] = config.inference.mem_gb
    if settings["plugin"] == "MultiProc":
        register_plugin()
        log_file = current_log_file()
        settings = {"plugin": "SafeMultiProc", "plugin_args": dict(
            settings["plugin_args"], log_file=str(log_file) if log_file else None,
            verbose=config.execution.verbose_count)}
    return settings


def reports_only(execution: ExecutionConfig) -> int:
    """``--reports-only``: rebuild the reports from what a run wrote (the facts its report
    nodes saved, the crash files in ``logs/``); nothing else runs and nothing is locked."""
    output_dir = execution.output_dir
    if not output_dir.is_dir():
        raise MissingInputError(f"{output_dir}: no output folder to rebuild reports from; run "
                                "the participant level first")
    from ..workflows.reports.rebuild import rebuild_reports

    labels = list(execution.participant_label) if execution.participant_label else None
    pages = rebuild_reports(output_dir, participants=labels)
    pages = [pages] if isinstance(pages, (str, Path)) else list(pages or [])
    print(f"neuroverse3d: rebuilt {len(pages)} report(s)"
          + (f": {', '.join(str(p) for p in pages)}" if pages else ""))
    return 0


def run(config: RunConfig, arguments: dict) -> int:
    """Run what ``config`` says; ``arguments``: the parsed command line, saved for
    ``--config-file`` beside the configuration."""
    execution = config.execution
    setup_console(execution.verbose_count)
    if execution.reports_only:
        return reports_only(execution)
    bids_dir, output_dir, work_dir = execution.bids_dir, execution.output_dir, execution.work_dir
    check_paths(bids_dir, output_dir, work_dir)
    run_id = execution.run_id
    if execution.analysis_level == "group":
        from .group import run_group

        writable(output_dir)
        setup_run_logging(output_dir, arguments, run_id, config)
        return run_group(config)

    from ..locks import WorkDirLock
    from .participant import plan_participant_run, run_workflow

    created = writable(work_dir)  # the lock lives there
    try:
        lock = WorkDirLock(work_dir, run_id).acquire()
    except BaseException:
        remove_created(created)  # a refused run leaves nothing it made
        raise
    try:
        writable(output_dir)
        setup_run_logging(output_dir, arguments, run_id, config)
        if config.seeds.random_seed is not None:
            seed_everything(config.seeds.random_seed)
        plan = plan_participant_run(config)
        return run_workflow(plan, plugin_settings(config), config)
    finally:
        lock.release()


def resume_command(argv: List[str]) -> str:
    """The command line that repeats this run, with ``cd <here> &&`` when it depends on the
    current folder (a relative path, or the default ``-w ./work``)."""
    command = shlex.join(["neuroverse3d", *argv])
    work_given = any(a in ("-w", "--work-dir") or a.startswith("--work-dir=") for a in argv)
    relative = [a for a in argv if not a.startswith("-") and not os.path.isabs(a)
                and os.path.exists(a)]
    if relative or not work_given:
        return f"cd {shlex.quote(os.getcwd())} && {command}"
    return command


def remove_temporaries(output_dir: Path, labels, since: float):
    """Remove the hidden temporary files of atomic writes that this run's killed workers left
    in its participants' output folders (another job's participants are not touched)."""
    from ..model.fileio import ATOMIC_TEMPORARY_GLOB

    folders = ([output_dir / f"sub-{label}" for label in labels] if labels
               else list(output_dir.glob("sub-*")))
    for folder in folders:
        for path in folder.rglob(ATOMIC_TEMPORARY_GLOB):
            try:
                if path.is_file() and path.stat().st_mtime >= since - 1:
                    path.unlink()
            except OSError:
                pass


def stopped(interrupt: KeyboardInterrupt, execution: ExecutionConfig, argv: List[str],
            since: float) -> RunStopped:
    """The one line for a run stopped by a signal: which signal, what is kept, how to resume.
    Removes the temporary files the run's killed workers left (``since``: its start)."""
    from ..progress import finished_participants

    code = getattr(interrupt, "exit_code", 130)
    kept = []
    if execution.analysis_level == "participant" and not execution.reports_only:
        remove_temporaries(execution.output_dir, execution.participant_label, since)
        kept.append(f"the work folder {execution.work_dir} (its finished steps are reused)")
        done = finished_participants()
        if done:
            kept.append(f"the outputs of {', '.join(done)} in {execution.output_dir}")
    return RunStopped(
        f"interrupted by {SIGNAL_NAMES.get(code - 128, f'signal {code - 128}')}; no partial "
        f"file was left; kept: {' and '.join(kept) or 'nothing to keep'}; resume with: "
        f"{resume_command(argv)}", exit_code=code)


def parse_args(argv=None):
    """Parse ``argv``; with ``--config-file``, the saved arguments are the defaults."""
    parser = build_parser()
    saved = saved_arguments(argv)
    appended = apply_saved_arguments(parser, saved) if saved else {}
    return fill_appended(parser.parse_args(argv), appended)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except NeuroverseError as error:  # a bad --config-file
        print(f"neuroverse3d: error: {error}", file=sys.stderr)
        return error.exit_code

    def guarded(args):
        since = time.time()
        config = RunConfig.from_arguments(args, run_id=new_run_id())
        labels = config.execution.participant_label
        arguments = dict(vars(args), participant_label=list(labels) if labels else None)
        with stop_on_signals():
            try:
                return run(config, arguments)
            except KeyboardInterrupt as interrupt:  # SIGINT or SIGTERM
                raise stopped(interrupt, config.execution, argv, since) from None

    return run_with_exit_codes("neuroverse3d", guarded, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
