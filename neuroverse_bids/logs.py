"""Run logs, the console and progress: the one place that decides where messages go.

* The run's log file, ``<output_dir>/logs/neuroverse3d_<run id>.log`` (:func:`setup_run_logging`),
  gets everything: the app's messages, one progress line per node and Nipype's INFO chatter
  (``[Node] Setting-up ...``), from the main process and from every MultiProc worker
  (:func:`configure_worker_logging`). The run's configuration is saved beside it.
* The console (:func:`setup_console`) gets warnings and errors, and the progress: on a terminal
  one live display per run (:class:`LiveDisplay`: a bar per participant with done/total nodes,
  elapsed time and an estimate of the time left), elsewhere (batch jobs, pipes) one line per
  node. ``-v`` adds the app's and Nipype's INFO messages, ``-vv`` DEBUG.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import List, Optional

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
_NODE_SUBJECT = re.compile(r"(?:^|\.)(context_|ds_|report_)?sub_([A-Za-z0-9]+?)(?:_\d+)?_wf(?:\.|$)")
#: Nipype's own crash messages (node name plus a full traceback): the console shows the app's
#: short summary of each crash file instead; the log file keeps them
_NIPYPE_CRASH = ("Saving crash info to", "could not run node", "Node %s failed to run on host",
                 '[Node] Error on "%s"')


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


def setup_run_logging(output_dir, args, run_id: Optional[str] = None) -> Path:
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
    write_text_atomic(config, json.dumps(run_config(args, run_id), indent=2) + "\n")
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
    :class:`LiveDisplay` is shown, above it (and progress lines are left to the display)."""

    def __init__(self, verbose: int = 0):
        super().__init__(logging.DEBUG)
        self.verbose = verbose
        self.display: Optional[LiveDisplay] = None
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
        if record.exc_info and self.verbose_traceback(record):
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING or record.name.startswith("nipype"):
            return f"{stamp} {record.levelname} {record.name}: {message}"
        return f"{stamp} {message}"

    @staticmethod
    def verbose_traceback(record) -> bool:
        return record.levelno >= logging.ERROR


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
    try:
        return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


# --- progress -----------------------------------------------------------------------------

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


def _has_result(node) -> bool:
    """Whether the node's result file exists (it ran now or in an earlier run)."""
    try:
        return (Path(node.output_dir()) / f"result_{node.name}.pklz").is_file()
    except Exception:  # not a Nipype node (tests) or no base folder: assume it ran
        return True


class ProgressReporter:
    """Nipype ``status_callback``: ``plugin_args["status_callback"] = ProgressReporter(wf)``.

    Logs ``[done/total] sub-01 | register: finished in 12.3 s`` lines (and a line when a
    participant's last node finishes) to the ``neuroverse3d.progress`` logger: the log file
    always gets them, the console when no live display is shown. ``live=True`` shows a
    :class:`LiveDisplay` on the console until :meth:`close`. A node that Nipype reports as
    finished without having started it has no duration: ``done`` (cached, or run in the main
    process) or ``not run`` (skipped after a failure: it has no result file).
    """

    def __init__(self, workflow=None, totals: Optional[Counter] = None, live: bool = False):
        self.totals = totals if totals is not None else (
            count_nodes(workflow) if workflow is not None else Counter())
        self.total = sum(self.totals.values())
        self.done, self.started, self.failed = Counter(), {}, Counter()
        self.first_start, self.last_end = {}, {}
        self.start_time = time.monotonic()
        self.display = LiveDisplay(self) if live else None

    def __call__(self, node, status: str):
        who, name = node_subject(node.fullname), node.fullname.rsplit(".", 1)[-1]
        if name.startswith("_"):  # a MapNode's subnode: its MapNode reports
            return
        now = time.monotonic()
        self.first_start.setdefault(who, now)
        if status == "start":
            self.started[node.fullname] = now
            PROGRESS.info("%s | %s: started", who, name, extra={"console": False})
            return
        start = self.started.pop(node.fullname, None)
        took = "" if start is None else f" in {max(0.0, now - start):.1f} s"
        if start is None and status == "end" and not _has_result(node):
            status = "skipped"  # Linear reports the dependents of a failed node as ended
        self.done[who] += 1
        self.last_end[who] = now
        finished = sum(self.done.values())
        count = f"[{finished}/{max(self.total, finished) if self.total else '?'}]"
        if status == "exception":
            self.failed[who] += 1
            PROGRESS.error("%s %s | %s: FAILED%s (crash file in logs/)", count, who, name,
                           took.replace(" in ", " after "))
        elif status == "skipped":
            PROGRESS.info("%s %s | %s: not run (a step before it failed)", count, who, name)
        else:
            PROGRESS.info("%s %s | %s: %s", count, who, name, f"finished{took}" if took else "done")
        if self.totals.get(who) and self.done[who] == self.totals[who]:
            state = f"{self.failed[who]} failed" if self.failed[who] else "all finished"
            PROGRESS.info("%s: %d steps, %s", who, self.totals[who], state)
        if self.display is not None:
            self.display.refresh()

    def __getstate__(self):
        """Nipype deep-copies (and pickles, for MultiProc) plugin arguments with the nodes: the
        copies need no display (nor its thread and lock)."""
        return dict(self.__dict__, display=None)

    def __enter__(self):
        if self.display is not None:
            self.display.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.display is not None:
            self.display.stop()


def _duration(seconds: float) -> str:
    seconds = int(max(0, round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


class LiveDisplay:
    """Progress bars redrawn in place on a terminal (stderr), once a second and on every event:
    one line per participant (the context pairs and run-level steps share the line "context
    set") and a total line, each with done/total nodes, elapsed time and, once a node finished,
    ``~<estimate> left`` (elapsed x remaining / done). Console messages are printed above it.
    """

    MAX_LINES = 10

    def __init__(self, reporter: ProgressReporter, interval: float = 1.0):
        self.reporter, self.interval = reporter, interval
        self.lock = threading.RLock()
        self.drawn = 0
        self._stop = threading.Event()
        self._thread = None
        self._console = None

    def start(self):
        self._console = console_handler()
        if self._console is not None:
            self._console.display = self
        self._thread = threading.Thread(target=self._tick, name="neuroverse3d-progress",
                                        daemon=True)
        self._thread.start()
        self.refresh()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self.lock:
            self.refresh()
            self.drawn = 0  # the final state stays on the screen
            if self._console is not None and self._console.display is self:
                self._console.display = None

    def _tick(self):
        while not self._stop.wait(self.interval):
            self.refresh()

    def _groups(self):
        """``(label, done, total, first start, last end, failed)`` per display line; ``total``
        is 0 when the workflow was not counted."""
        reporter, groups = self.reporter, {}
        for who in set(reporter.totals) | set(reporter.first_start):
            total = reporter.totals.get(who, 0)
            label = "context set" if who == "run" or who.startswith("context ") else who
            entry = groups.setdefault(label, [0, 0, None, None, 0])
            entry[0] += reporter.done[who]
            entry[1] += total
            start, end = reporter.first_start.get(who), reporter.last_end.get(who)
            if start is not None:
                entry[2] = start if entry[2] is None else min(entry[2], start)
            if end is not None:
                entry[3] = end if entry[3] is None else max(entry[3], end)
            entry[4] += reporter.failed[who]
        return [(label, *values) for label, values in sorted(
            groups.items(), key=lambda item: (item[0] != "context set", item[0]))]

    @staticmethod
    def _line(label, done, total, start, end, failed, now) -> str:
        if not total:  # not counted: no bar, no estimate
            return (f"{label:<16.16} {done:>3} steps finished"
                    + (f" in {_duration(now - start)}" if start is not None else "")
                    + (f"  {failed} FAILED" if failed else ""))
        text = f"{label:<16.16} {_bar(done, total)} {done:>3}/{total:<3}"
        if start is None:
            return text + " waiting"
        if done >= total:
            state = f"{failed} FAILED" if failed else "done"
            return text + f" {state} in {_duration((end or now) - start)}"
        elapsed = now - start
        text += f" {_duration(elapsed)}"
        if done:
            text += f"  ~{_duration(elapsed * (total - done) / done)} left"
        return text + (f"  {failed} FAILED" if failed else "")

    def lines(self) -> List[str]:
        now, reporter = time.monotonic(), self.reporter
        groups = self._groups()
        # too many participants for the screen: the unfinished ones only
        active = groups if len(groups) < self.MAX_LINES else \
            [g for g in groups if not g[2] or g[1] < g[2]]
        shown = [self._line(*g, now) for g in active[: self.MAX_LINES - 1]]
        if len(groups) > len(shown):
            shown.append(f"{'':16} (+{len(groups) - len(shown)} more)")
        done = sum(reporter.done.values())
        total = max(reporter.total, done) if reporter.total else 0
        shown.append(self._line("total", done, total, reporter.start_time, None,
                                sum(reporter.failed.values()), now))
        width = shutil.get_terminal_size((100, 20)).columns - 1
        return [line[:width] for line in shown]

    def _erase(self, stream):
        if self.drawn:
            stream.write(f"\x1b[{self.drawn}F\x1b[J")  # to the first drawn line, clear below
            self.drawn = 0

    def refresh(self):
        with self.lock:
            stream = sys.stderr
            try:
                self._erase(stream)
                lines = self.lines()
                stream.write("".join(line + "\n" for line in lines))
                stream.flush()
                self.drawn = len(lines)
            except (OSError, ValueError):  # the terminal went away: stop drawing
                self._stop.set()

    def write_above(self, text: str):
        with self.lock:
            stream = sys.stderr
            self._erase(stream)
            stream.write(text + "\n")
            self.refresh()
