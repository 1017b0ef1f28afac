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

Stopping: workers ignore SIGINT (Ctrl-C reaches the whole process group; the main process
decides, see ``errors.stop_on_signals``), and when the run ends with an exception (a signal, a
full disk) the plugin kills its workers at once instead of waiting for their nodes. A full disk
stops the run at the first node it fails (every later write would fail too) with one
:class:`~neuroverse_bids.workflows.errors.DiskFullError` (exit 73) instead of one crash per node.

:func:`reporting` adds the progress reporter (``progress.py``) to a run's plugin settings;
:func:`report_crashes` summarises a run's crash files on the console.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from traceback import format_exception
from typing import List, Optional

from nipype.pipeline.plugins import MultiProcPlugin

from .workflows.errors import DiskFullError, disk_full_error

PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: a full disk in a node's traceback: the app's own error, or the OS error (with its path)
_DISK_FULL = re.compile(r"DiskFullError: (?P<message>[^\n]+)")
_ENOSPC = re.compile(r"\[Errno (?:28|122)\] (?P<reason>[^\n':]*)[^\n']*(?:'(?P<path>[^']+)')?")


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
    # Ctrl-C signals the whole process group: the main process stops the run (and kills the
    # workers); a worker's KeyboardInterrupt would only print a traceback per worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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

    def run(self, graph, config, updatehash=False):
        try:
            return super().run(graph, config, updatehash=updatehash)
        except BaseException:  # a signal, a full disk: the workers' nodes are void
            self.stop_workers()
            raise

    def stop_workers(self):
        """Kill the workers now (their node folders are redone on the next run) and close the
        pool without waiting for the nodes they were running."""
        for process in list((getattr(self.pool, "_processes", None) or {}).values()):
            try:
                process.kill()
            except (OSError, AttributeError):
                pass
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _async_callback(self, future):
        """Nipype's callback, for a future whose worker died too (killed by a signal or by the
        out-of-memory killer): the node fails with a crash file instead of a traceback on the
        console and a run that waits for it forever."""
        try:
            super()._async_callback(future)
        except BaseException as error:
            taskid = next((t for t, f in list(self._task_obj.items()) if f is future), None)
            if taskid is not None:
                self._taskresult[taskid] = {"result": None, "taskid": taskid, "traceback": [
                    f"{type(error).__name__}: {error} (its worker process was killed: by a "
                    "signal, or by the out-of-memory killer)\n"]}

    def _clean_queue(self, jobid, graph, result=None):
        """A failed node: a full disk stops the run (see the module's docstring)."""
        if result is not None and result.get("traceback"):
            text = "".join(result["traceback"])
        else:
            text = "".join(format_exception(*sys.exc_info()))
        full = disk_full_in(text, fallback=_node_folder(self.procs[jobid]))
        if full is not None:
            raise full from None
        return super()._clean_queue(jobid, graph, result=result)


def _node_folder(node) -> Optional[str]:
    try:
        return node.output_dir()
    except Exception:
        return None


def disk_full_in(text: str, fallback=None) -> Optional[DiskFullError]:
    """The :class:`DiskFullError` a node's traceback (or crash file) shows, else None: the
    app's own message, or one made for the path of the OS error (``fallback`` when it names
    none: the node's folder)."""
    match = _DISK_FULL.search(text)
    if match:
        return DiskFullError(match.group("message").strip())
    match = _ENOSPC.search(text)
    if match:
        return disk_full_error(match.group("path") or fallback or os.getcwd(),
                               reason=match.group("reason").strip() or "No space left on device")
    return None


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
    participant, node, the last line of the error, the input that caused it and the file.

    A crash of a full disk (plugins other than SafeMultiProc run on after it) raises that one
    :class:`DiskFullError` (exit 73) instead."""
    from .logs import LOGGER
    from .workflows.reports.crash import node_subject, summarise_crash

    crashes = sorted(path for folder in folders for path in Path(folder).glob("crash-*")
                     if path.stat().st_mtime >= since - 1)
    for path in crashes:
        try:
            full = disk_full_in(path.read_text(errors="replace")) if path.suffix == ".txt" \
                else None
        except OSError:
            full = None
        if full is not None:
            raise full
    for path in crashes:
        summary = summarise_crash(path)
        node = summary.get("node") or path.name
        LOGGER.error("%s | %s failed: %s%s\n    crash file: %s", node_subject(node),
                     node.rsplit(".", 1)[-1], summary.get("error"),
                     f"\n    input: {summary['input']}" if summary.get("input") else "", path)
    return crashes
