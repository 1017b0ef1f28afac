"""Run logs: one log file and the run's full configuration per run, and progress lines.

``setup_run_logging(output_dir, args)`` creates ``<output_dir>/logs/neuroverse3d_<run id>.log``
(everything the ``neuroverse3d`` and Nipype loggers emit from now on) and, beside it,
``neuroverse3d_<run id>_config.json`` (arguments, command line, versions, environment).
``ProgressReporter`` is a Nipype ``status_callback`` that logs one line per participant and
node as the workflow runs.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Optional

from .workflows.errors import OutputError
from .workflows.reports.common import write_text_atomic

LOGGER = logging.getLogger("neuroverse3d")
PROGRESS = logging.getLogger("neuroverse3d.progress")
#: loggers whose records go to the run's log file
LOGGERS = ("neuroverse3d", "nipype.workflow", "nipype.interface", "nipype.utils")
FORMAT = "%(asctime)s | %(name)s | %(levelname)s | %(message)s"
#: environment variables recorded in the configuration (values, not secrets)
ENVIRONMENT = ("TEMPLATEFLOW_HOME", "OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
               "CUDA_VISIBLE_DEVICES", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER",
               "NEUROVERSE3D_IMAGE_TAG", "SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID")
PACKAGES = ("neuroverse3d", "torch", "numpy", "nibabel", "nipype", "antspyx", "nilearn",
            "templateflow", "pybids", "safetensors")
_NODE_SUBJECT = re.compile(r"(?:^|\.)(context_|ds_)?sub_([A-Za-z0-9]+?)(?:_\d+)?_wf(?:\.|$)")


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def run_config(args, run_id: str) -> dict:
    """The run's full configuration: arguments, command, versions, host and environment."""
    return {
        "RunId": run_id,
        "Started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "Command": [sys.executable] + sys.argv,
        "Arguments": _jsonable(vars(args)),
        "Versions": dict(_versions(), python=platform.python_version()),
        "Host": {"name": socket.gethostname(), "platform": platform.platform(),
                 "cpus": os.cpu_count()},
        "Environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
        "WorkingDirectory": os.getcwd(),
    }


def setup_run_logging(output_dir, args, run_id: Optional[str] = None) -> Path:
    """Start this run's log file under ``<output_dir>/logs/``; save the configuration beside it.

    Returns the log file's path. A handler added by an earlier call in the same process is
    closed and replaced, so each run logs to its own file only.
    """
    run_id = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:8]}"
    logs = Path(output_dir) / "logs"
    log_file = logs / f"neuroverse3d_{run_id}.log"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError as error:
        raise OutputError(f"{logs}: cannot write the run log here ({error.strerror})") from None
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.DEBUG)
    handler._neuroverse_run = run_id  # marks our handler, to replace it on the next call
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if hasattr(h, "_neuroverse_run")]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
    if LOGGER.getEffectiveLevel() > logging.INFO:
        LOGGER.setLevel(logging.INFO)  # the file always gets the progress lines
    config = logs / f"neuroverse3d_{run_id}_config.json"
    write_text_atomic(config, json.dumps(run_config(args, run_id), indent=2) + "\n")
    LOGGER.info("run %s: log %s, configuration %s", run_id, log_file, config)
    return log_file


def node_subject(fullname: str) -> str:
    """``sub-01`` for a node of subject 01's workflows, ``context sub-03`` for a context pair's,
    ``run`` for run-level nodes (the stacked context set)."""
    match = _NODE_SUBJECT.search(fullname)
    if not match:
        return "run"
    return ("context " if match.group(1) == "context_" else "") + f"sub-{match.group(2)}"


def count_nodes(workflow) -> Counter:
    """Nodes per participant (as :func:`node_subject` names them) that the workflow will run.

    Identity nodes (``inputnode``/``outputnode``, which Nipype drops before running) are not
    counted.
    """
    from nipype.interfaces.utility import IdentityInterface

    return Counter(node_subject(node.fullname) for node in workflow._create_flat_graph().nodes()
                   if not isinstance(node.interface, IdentityInterface))


class ProgressReporter:
    """Nipype ``status_callback``: ``plugin_args["status_callback"] = ProgressReporter(wf)``.

    Logs ``[done/total] sub-01 | register: finished in 12.3 s`` lines (and a line when a
    participant's last node finishes) to the ``neuroverse3d.progress`` logger.
    """

    def __init__(self, workflow=None, totals: Optional[Counter] = None):
        self.totals = totals if totals is not None else (
            count_nodes(workflow) if workflow is not None else Counter())
        self.total = sum(self.totals.values())
        self.done, self.started, self.failed = Counter(), {}, Counter()

    def __call__(self, node, status: str):
        who, name = node_subject(node.fullname), node.fullname.rsplit(".", 1)[-1]
        if name.startswith("_"):  # a MapNode's subnode: its MapNode reports
            return
        if status == "start":
            self.started[node.fullname] = time.perf_counter()
            PROGRESS.info("%s | %s: started", who, name)
            return
        seconds = time.perf_counter() - self.started.pop(node.fullname, time.perf_counter())
        self.done[who] += 1
        finished = sum(self.done.values())
        count = f"[{finished}/{max(self.total, finished) if self.total else '?'}]"
        if status == "exception":
            self.failed[who] += 1
            PROGRESS.error("%s %s | %s: FAILED after %.1f s (crash file in logs/)", count, who,
                           name, seconds)
        else:
            PROGRESS.info("%s %s | %s: finished in %.1f s", count, who, name, seconds)
        if self.totals.get(who) and self.done[who] == self.totals[who]:
            state = f"{self.failed[who]} failed" if self.failed[who] else "all finished"
            PROGRESS.info("%s: %d steps, %s", who, self.totals[who], state)
