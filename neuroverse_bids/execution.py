"""Running a Nipype workflow: workers that die with the main process, progress, crashes.

Nipype's MultiProc plugin runs nodes in a ``ProcessPoolExecutor``; with the ``forkserver``
context (which the app uses, see ``cli/run.py``) the workers are children of the forkserver,
which exits when the main process dies. A worker whose main process was killed (``kill -9``,
the out-of-memory killer) would keep computing its node and write half a node folder into the
work directory. :class:`SafeMultiProcPlugin` starts each worker with
:func:`worker_initializer`: on Linux the kernel kills the worker when its parent dies
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``), and everywhere a watchdog thread ends the worker within
a second once the main process is gone. The initializer also sends the worker's log records to
the run's log file (``logs.configure_worker_logging``). ``plugin="SafeMultiProc"`` names it
for ``workflow.run`` once :func:`register_plugin` ran.

:func:`reporting` adds the progress reporter (``progress.py``) to a run's plugin settings;
:func:`report_crashes` summarises a run's crash files on the console.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

from nipype.pipeline.plugins import MultiProcPlugin

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its parent exits. False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(main_pid: int, interval: float):
    """Exit this worker (without cleanup: its node's work is void) once ``main_pid`` is gone."""
    while _alive(main_pid):
        time.sleep(interval)
    os._exit(1)


def worker_initializer(cwd: str, main_pid: int, log_file: Optional[str], verbose: int):
    """Set up a MultiProc worker: die with the main process, log to the run's file, then do
    what Nipype's own initializer does."""
    from nipype.pipeline.plugins.multiproc import process_initializer

    _die_with_parent()
    if not _alive(main_pid):  # it died before the kernel was told
        os._exit(1)
    threading.Thread(target=_watch, args=(main_pid, 1.0), name="neuroverse3d-watchdog",
                     daemon=True).start()
    from .logs import configure_worker_logging

    configure_worker_logging(log_file, verbose)
    process_initializer(cwd)


class SafeMultiProcPlugin(MultiProcPlugin):
    """Nipype's MultiProc plugin with workers started by :func:`worker_initializer`.

    ``plugin_args`` as MultiProc's, plus ``log_file`` (the run's log) and ``verbose`` (``-v``
    count) for the workers' logging.
    """

    def __init__(self, plugin_args=None):
        import multiprocessing as mp

        super().__init__(plugin_args=plugin_args)
        self.pool.shutdown(wait=True)  # Nipype's own pool: no worker started yet
        log_file = self.plugin_args.get("log_file")
        context = mp.get_context(self.plugin_args.get("mp_context"))
        self.pool = ProcessPoolExecutor(
            max_workers=self.processors, mp_context=context, initializer=worker_initializer,
            initargs=(self._cwd, os.getpid(), str(log_file) if log_file else None,
                      int(self.plugin_args.get("verbose", 0))))


def register_plugin():
    """Make ``plugin="SafeMultiProc"`` a name ``workflow.run`` finds (Nipype looks plugins up
    by ``<name>Plugin`` in ``nipype.pipeline.plugins``)."""
    import nipype.pipeline.plugins as plugins

    plugins.SafeMultiProcPlugin = SafeMultiProcPlugin


@contextmanager
def reporting(plugin: dict, workflow=None):
    """``with reporting(plugin, workflow) as settings: workflow.run(**settings)``: the plugin
    settings with a :class:`~neuroverse_bids.progress.ProgressReporter` as status callback, whose
    live display (on a terminal) is shown for the duration of the block."""
    from .logs import stderr_is_terminal
    from .progress import ProgressReporter

    with ProgressReporter(workflow, live=stderr_is_terminal()) as reporter:
        yield dict(plugin, plugin_args=dict(plugin.get("plugin_args", {}),
                                            status_callback=reporter))


def report_crashes(folders, since: float) -> List[Path]:
    """Log one summary per crash file written into ``folders`` since ``since`` (``time.time()``):
    participant, node, the last line of the error, the input that caused it and the file."""
    from .logs import LOGGER
    from .workflows.reports.crash import node_subject, summarise_crash

    crashes = sorted(path for folder in folders for path in Path(folder).glob("crash-*")
                     if path.stat().st_mtime >= since - 1)
    for path in crashes:
        summary = summarise_crash(path)
        node = summary.get("node") or path.name
        LOGGER.error("%s | %s failed: %s%s\n    crash file: %s", node_subject(node),
                     node.rsplit(".", 1)[-1], summary.get("error"),
                     f"\n    input: {summary['input']}" if summary.get("input") else "", path)
    return crashes
