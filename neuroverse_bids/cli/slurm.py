"""``neuroverse3d-slurm``: the participant level as a SLURM job array, then the group level.

One array task per participant (``sbatch --array=1-N%M``), each with its own work folder and
the same context cache (``--context-cache``, default ``<output_dir>/cache/context-sets``): the
first task registers the context pairs under a lock, the others wait and reuse them. The group
level is submitted with ``--dependency=afterok:<array>``, so it runs once every task succeeded
(and is cancelled if one failed). Everything after ``--`` goes to ``neuroverse3d ...
participant``; the job scripts, the participant list and the task logs are written to
``<work_dir>/slurm/``.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

from ..errors import run_with_exit_codes
from ..workflows.errors import ExitCode, NeuroverseError, UsageError
from .options import ExitCode64Parser, positive_int

SCRIPT = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --output={logs}/{name}_{pattern}.out
set -euo pipefail
{body}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ExitCode64Parser(
        prog="neuroverse3d-slurm", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Submit the participant level as a SLURM job array (one participant per "
                    "task, one shared context set), then the group level after it. Options "
                    "after -- are passed to `neuroverse3d ... participant`.")
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="participants to run (default: every subject of bids_dir)")
    parser.add_argument("-w", "--work-dir", type=Path, default=Path("work"), metavar="DIR",
                        help="shared folder: one work folder per task and the job scripts")
    parser.add_argument("--context-cache", type=Path, metavar="DIR",
                        help="context cache shared by the tasks (default: "
                             "<output_dir>/cache/context-sets)")
    parser.add_argument("--max-parallel", type=positive_int, metavar="N",
                        help="at most N array tasks at once (sbatch --array=...%%N)")
    parser.add_argument("--sbatch-args", default="", metavar="ARGS",
                        help="options of every participant task, e.g. '--cpus-per-task=8 "
                             "--mem=32G --time=02:00:00'")
    parser.add_argument("--group-sbatch-args", default="", metavar="ARGS",
                        help="options of the group job")
    parser.add_argument("--command", metavar="CMD",
                        help="how tasks start the app, e.g. 'apptainer run --cleanenv -B ... "
                             "neuroverse3d.sif' (default: this Python's neuroverse3d)")
    parser.add_argument("--wait", action="store_true",
                        help="return when the group job has finished (its exit status)")
    parser.add_argument("--dry-run", action="store_true",
                        help="write the job scripts and print the sbatch commands only")
    return parser


def _participants(bids_dir: Path, labels) -> List[str]:
    from ..bids import load_layout, select_participants

    if labels:
        return [label[4:] if label.startswith("sub-") else label for label in labels]
    return select_participants(load_layout(bids_dir))


def _sbatch(arguments: Sequence[str], dry_run: bool) -> str:
    command = ["sbatch", "--parsable", *arguments]
    print("$ " + shlex.join(command))
    if dry_run:
        return "<dry-run>"
    if shutil.which("sbatch") is None:
        raise NeuroverseError("sbatch not found: run neuroverse3d-slurm on a SLURM login node "
                              "(or use --dry-run to see the job scripts)", exit_code=ExitCode.FAILURE)
    done = subprocess.run(command, capture_output=True, text=True)
    match = re.match(r"\s*(\d+)", done.stdout)
    if match is None:
        raise NeuroverseError(f"sbatch failed (exit {done.returncode}): {done.stderr.strip()}",
                              exit_code=ExitCode.FAILURE)
    if done.returncode != 0:  # --wait: the job ran and failed (or was cancelled)
        raise NeuroverseError(f"job {match.group(1)} failed (exit {done.returncode}); see its "
                              "log in the slurm folder of the work directory", exit_code=ExitCode.FAILURE)
    return match.group(1)


def _has(options: Sequence[str], *names: str) -> bool:
    return any(o == n or o.startswith(n + "=") for o in options for n in names)


def submit(args, participant_args: Sequence[str]) -> int:
    bids_dir, output_dir = args.bids_dir.resolve(), args.output_dir.resolve()
    work_dir = args.work_dir.resolve()
    extra = list(participant_args)
    if _has(extra, "--participant-label", "--participant_label", "-w", "--work-dir"):
        raise UsageError("give --participant-label and -w/--work-dir to neuroverse3d-slurm, "
                         "not after --: each task gets one participant and its own work folder")
    subjects = _participants(bids_dir, args.participant_label)
    cache = (args.context_cache or output_dir / "cache" / "context-sets").resolve()
    folder = work_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "participants.txt").write_text("".join(f"{s}\n" for s in subjects))
    app = args.command or f"{shlex.quote(sys.executable)} -m neuroverse_bids.cli.run"
    if not _has(extra, "--nprocs", "--nthreads", "--n_cpus"):
        extra += ["--nprocs", "${SLURM_CPUS_PER_TASK:-1}"]
    if not _has(extra, "--mem", "--mem-gb"):
        extra += ["--mem", "${SLURM_MEM_PER_NODE:-${SLURM_MEM_PER_CPU:-4096}}"]  # MB
    options = " ".join(o if o.startswith("${") else shlex.quote(o) for o in extra)
    participant = SCRIPT.format(name="neuroverse3d-participant", logs=folder, pattern="%A_%a", body=(
        f'label=$(sed -n "${{SLURM_ARRAY_TASK_ID}}p" {shlex.quote(str(folder))}/participants.txt)\n'
        'echo "neuroverse3d-slurm: sub-$label started $(date +%s.%N)"\n'
        f"{app} {shlex.quote(str(bids_dir))} {shlex.quote(str(output_dir))} participant "
        f'--participant-label "$label" -w {shlex.quote(str(work_dir))}/"sub-$label" '
        f"--context-cache {shlex.quote(str(cache))} {options}\n"
        'echo "neuroverse3d-slurm: sub-$label finished $(date +%s.%N)"'))
    group = SCRIPT.format(name="neuroverse3d-group", logs=folder, pattern="%j", body=(
        f"{app} {shlex.quote(str(bids_dir))} {shlex.quote(str(output_dir))} group "
        f"-w {shlex.quote(str(work_dir))}/group"))
    (folder / "participant.sbatch").write_text(participant)
    (folder / "group.sbatch").write_text(group)
    limit = f"%{args.max_parallel}" if args.max_parallel else ""
    array = _sbatch([f"--array=1-{len(subjects)}{limit}", *shlex.split(args.sbatch_args),
                     str(folder / "participant.sbatch")], args.dry_run)
    group_args = [f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes",
                  *shlex.split(args.group_sbatch_args), str(folder / "group.sbatch")]
    group_job = _sbatch((["--wait"] if args.wait else []) + group_args, args.dry_run)
    jobs = {"array": array, "group": group_job, "subjects": subjects, "logs": str(folder)}
    (folder / "jobs.json").write_text(json.dumps(jobs, indent=2) + "\n")
    print(f"neuroverse3d-slurm: participant array {array} ({len(subjects)} task(s)), group job "
          f"{group_job} after it; logs in {folder}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    return run_with_exit_codes("neuroverse3d-slurm", submit, args, argv[split + 1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
