"""Progress of a workflow run: one line per node, or a live display on a terminal.

:class:`ProgressReporter` is the Nipype ``status_callback``: it logs ``[done/total] sub-01 |
register: finished in 12.3 s`` lines to the ``neuroverse3d.progress`` logger (where they go is
decided in ``logs.py``: always the run's log file, the console when no display is shown) and
drives a :class:`LiveDisplay` on a terminal.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional

from .logs import PROGRESS, console_handler, isatty
from .workflows.reports.crash import node_subject


#: participants whose every step finished without failure in this process (for the line of
#: an interrupted run: their outputs are complete)
_FINISHED: List[str] = []


def finished_participants() -> List[str]:
    """``sub-<label>`` of the participants all of whose steps finished in this process."""
    return list(_FINISHED)


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
            if not self.failed[who] and who.startswith("sub-") and who not in _FINISHED:
                _FINISHED.append(who)
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
        self._console = self._stdout = None

    def start(self):
        self._console = console_handler()
        if self._console is not None:
            self._console.display = self
        if isatty(sys.stdout):  # print() on the same screen goes above the display too
            self._stdout, sys.stdout = sys.stdout, _AboveDisplay(self, sys.stdout)
        self._thread = threading.Thread(target=self._tick, name="neuroverse3d-progress",
                                        daemon=True)
        self._thread.start()
        self.refresh()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self.lock:
            if self.reporter.done:
                self.refresh()
                self.drawn = 0  # the final state stays on the screen
            else:  # nothing ran (e.g. a reused context set): leave no empty display
                self._erase(sys.stderr)
            if self._console is not None and self._console.display is self:
                self._console.display = None
            if isinstance(sys.stdout, _AboveDisplay) and sys.stdout.display is self:
                sys.stdout = self._stdout

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


class _AboveDisplay:
    """``sys.stdout`` while a :class:`LiveDisplay` is shown on the same terminal: whole lines
    are written above the display."""

    def __init__(self, display: LiveDisplay, stream):
        self.display, self.stream, self.pending = display, stream, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.display.write_above(line)
        return len(text)

    def flush(self):
        if self.pending:
            self.display.write_above(self.pending)
            self.pending = ""

    def __getattr__(self, name):
        return getattr(self.stream, name)
