"""Run logs and the console: the one place that decides where messages go.

* The run's log file, ``<output_dir>/logs/neuroverse3d_<run id>.log`` (:func:`setup_run_logging`),
  gets everything: the app's messages, one progress line per node and Nipype's INFO chatter
  (``[Node] Setting-up ...``), from the main process and from every MultiProc worker
  (:func:`configure_worker_logging`). The run's configuration is saved beside it.
* The console (:func:`setup_console`) gets warnings and errors, and the progress: on a terminal
  one live display per run (``progress.LiveDisplay``: a bar per participant with done/total
  nodes, elapsed time and an estimate of the time left), elsewhere (batch jobs, pipes) one line
  per node. ``-v`` adds the app's and Nipype's INFO messages, ``-vv`` DEBUG.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from .workflows.errors import OutputError
from .workflows.niftiio import write_text_atomic

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
#: Nipype's own crash messages (node name plus a full traceback): the console shows the app's
#: short summary of each crash file instead; the log file keeps them
_NIPYPE_CRASH = ("Saving crash info to", "could not run node", "Node %s failed to run on host",
                 '[Node] Error on "%s"', "Storing result file without outputs")


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


def run_config(arguments, run_id: str, config=None) -> dict:
    """The run's full record: the command line's arguments (a dict or a Namespace; what
    ``--config-file`` restores), the typed configuration (:class:`~.config.RunConfig`, when
    given), command, versions, host and environment."""
    arguments = arguments if isinstance(arguments, dict) else vars(arguments)
    return {
        "RunId": run_id,
        "Started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "Command": [sys.executable] + sys.argv,
        "Arguments": _jsonable(arguments),
        **({"Config": config.to_dict()} if config is not None else {}),
        "Versions": dict(_versions(), python=platform.python_version()),
        "Host": {"name": socket.gethostname(), "platform": platform.platform(),
                 "cpus": os.cpu_count()},
        "Environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
        "WorkingDirectory": os.getcwd(),
    }


def _replace_handler(logger: logging.Logger, handler: logging.Handler, marker: str):
    """Attach ``handler`` to ``logger`` instead of the one an earlier call attached."""
    for old in [h for h in logger.handlers if hasattr(h, marker)]:
        logger.removeHandler(old)
        old.close()
    setattr(handler, marker, True)
    logger.addHandler(handler)


def _file_handler(log_file: Path) -> logging.Handler:
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.DEBUG)
    return handler


def new_run_id() -> str:
    """``<date>-<time>_<8 hex>``: names the run's log, configuration and work-folder lock."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:8]}"


def setup_run_logging(output_dir, arguments, run_id: Optional[str] = None,
                      run_configuration=None) -> Path:
    """Start this run's log file under ``<output_dir>/logs/``; save the configuration beside it.

    Returns the log file's path. A handler added by an earlier call in the same process is
    closed and replaced, so each run logs to its own file only.
    """
    run_id = run_id or new_run_id()
    logs = Path(output_dir) / "logs"
    log_file = logs / f"neuroverse3d_{run_id}.log"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        handler = _file_handler(log_file)
    except OSError as error:
        raise OutputError(f"{logs}: cannot write the run log here ({error.strerror})") from None
    handler._neuroverse_run = run_id
    for name in LOGGERS:
        _replace_handler(logging.getLogger(name), handler, "_neuroverse_run")
    if LOGGER.getEffectiveLevel() > logging.INFO:
        LOGGER.setLevel(logging.INFO)  # the file always gets the progress lines
    config = logs / f"neuroverse3d_{run_id}_config.json"
    write_text_atomic(config, json.dumps(run_config(arguments, run_id, run_configuration), indent=2) + "\n")
    LOGGER.info("run %s: log %s, configuration %s", run_id, log_file, config)
    return log_file


def current_log_file() -> Optional[Path]:
    """The log file :func:`setup_run_logging` opened last in this process, if any."""
    for handler in LOGGER.handlers:
        if hasattr(handler, "_neuroverse_run"):
            return Path(handler.baseFilename)
    return None


# --- the console --------------------------------------------------------------------------

class ConsoleHandler(logging.Handler):
    """Writes the records meant for the console to the current ``sys.stderr``; while a
    ``progress.LiveDisplay`` is shown, above it (and progress lines are left to the display)."""

    def __init__(self, verbose: int = 0):
        super().__init__(logging.DEBUG)
        self.verbose = verbose
        self.display = None  # the progress.LiveDisplay on screen, if any
        self.addFilter(self.wanted)
        self.setFormatter(_ConsoleFormatter())

    @property
    def stream(self):
        return sys.stderr

    def wanted(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return self.verbose > 0 or not (record.name.startswith("nipype") and
                                            str(record.msg).startswith(_NIPYPE_CRASH))
        if record.name == PROGRESS.name:  # one line per node, unless the display shows it
            return self.display is None and getattr(record, "console", True)
        return self.verbose >= (1 if record.levelno >= logging.INFO else 2)

    def emit(self, record: logging.LogRecord):
        try:
            text = self.format(record)
            if self.display is not None:
                self.display.write_above(text)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()
        except Exception:  # logging must never stop the run
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    """``12:03:04 [3/87] sub-01 | register: finished in 41.2 s``; warnings and errors also name
    their level and logger."""

    def format(self, record):
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING or record.name.startswith("nipype"):
            return f"{stamp} {record.levelname} {record.name}: {message}"
        return f"{stamp} {message}"


def console_handler() -> Optional[ConsoleHandler]:
    for handler in LOGGER.handlers:
        if isinstance(handler, ConsoleHandler):
            return handler
    return None


def _drop_nipype_stdout_handler():
    """Nipype prints every record of its loggers to stdout through its own handler; the
    console handler decides instead."""
    import nipype  # noqa: F401 (its import installs that handler)

    logger = logging.getLogger("nipype")
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)


def setup_console(verbose: int = 0) -> ConsoleHandler:
    """Route the app's and Nipype's records to the console as the module docstring says.

    Safe to call again (each call replaces the previous console handler). Nipype's loggers run
    at INFO (DEBUG with ``-vv``) so that the log file gets their records.
    """
    from nipype import config, logging as nipype_logging

    _drop_nipype_stdout_handler()
    level = "DEBUG" if verbose >= 2 else "INFO"
    for key in ("workflow_level", "interface_level", "utils_level"):
        config.set("logging", key, level)
    nipype_logging.update_logging(config)
    handler = ConsoleHandler(verbose)
    for name in ("neuroverse3d", "nipype"):
        _replace_handler(logging.getLogger(name), handler, "_neuroverse_console")
    LOGGER.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    return handler


def configure_worker_logging(log_file: Optional[str], verbose: int = 0):
    """In a MultiProc worker: Nipype's records to the run's log file (appended), and only what
    the console should show to the inherited stderr."""
    handler = setup_console(verbose)
    if log_file:
        file_handler = _file_handler(Path(log_file))
        for name in LOGGERS:
            _replace_handler(logging.getLogger(name), file_handler, "_neuroverse_run")
    return handler


def stderr_is_terminal() -> bool:
    """A live display only on an interactive terminal (not ``TERM=dumb``, not a pipe or file)."""
    return isatty(sys.stderr) and os.environ.get("TERM", "") != "dumb"


def isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def job_tag() -> str:
    """This job's name in log file names: the SLURM array task or job, else pid and time."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"job-{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    if "SLURM_JOB_ID" in os.environ:
        return f"job-{os.environ['SLURM_JOB_ID']}"
    return f"pid-{os.getpid()}_{int(time.time())}"


def container_info() -> Optional[dict]:
    """``{"Type": ..., "Tag": ...}`` when running inside Docker or Apptainer, else None."""
    from . import __version__

    tag = os.environ.get("NEUROVERSE3D_IMAGE_TAG", __version__)
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return {"Type": "apptainer", "Tag": tag}
    if Path("/.dockerenv").exists():
        return {"Type": "docker", "Tag": tag}
    return None
