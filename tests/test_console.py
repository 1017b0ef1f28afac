"""The console: warnings, errors and progress on stderr; Nipype's INFO chatter only in the run's
log file (``-v`` brings it back); a live display on a terminal; durations never negative."""
import argparse
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from neuroverse_bids import logs, progress


@pytest.fixture
def console(monkeypatch):
    """``setup_console(verbose)`` with its handlers removed afterwards."""
    made = []

    def setup(verbose=0):
        made.append(logs.setup_console(verbose))
        return made[-1]

    yield setup
    for handler in made:
        for name in ("neuroverse3d", "nipype"):
            logging.getLogger(name).removeHandler(handler)


def _node(fullname):
    return SimpleNamespace(fullname=fullname)


def test_nipype_info_goes_to_the_log_file_only(console, tmp_path, capsys):
    console(0)
    log_file = logs.setup_run_logging(tmp_path / "out", argparse.Namespace(a=1), run_id="t")
    nipype = logging.getLogger("nipype.workflow")
    nipype.info('[Node] Setting-up "wf.sub_01_wf.register"')
    nipype.warning("a nipype warning")
    logging.getLogger("neuroverse3d").warning("an app warning")
    logs.PROGRESS.info("[1/2] sub-01 | register: finished in 1.0 s")
    captured = capsys.readouterr()
    console_text = captured.out + captured.err
    assert "Setting-up" not in console_text
    assert "a nipype warning" in captured.err and "an app warning" in captured.err
    assert "[1/2] sub-01 | register: finished in 1.0 s" in captured.err
    text = log_file.read_text()
    assert "Setting-up" in text and "a nipype warning" in text and "finished in 1.0 s" in text


def test_verbose_brings_nipype_info_back(console, capsys):
    console(1)
    logging.getLogger("nipype.workflow").info('[Node] Executing "register"')
    assert '[Node] Executing "register"' in capsys.readouterr().err


def test_nipype_crash_traceback_is_left_to_the_summary(console, capsys):
    console(0)
    logging.getLogger("nipype.workflow").error("Saving crash info to %s\n%s", "/x/crash.txt",
                                               "Traceback ...\nValueError: boom")
    assert "Traceback" not in capsys.readouterr().err


def test_durations_are_never_negative(console, caplog):
    console(0)
    reporter = progress.ProgressReporter(totals={"sub-01": 2})
    with caplog.at_level(logging.INFO, logger="neuroverse3d.progress"):
        reporter(_node("neuroverse3d_wf.ds_sub_01_wf.ds_mask"), "end")  # no "start" (main process)
        reporter(_node("neuroverse3d_wf.sub_01_wf.icl"), "start")
        reporter(_node("neuroverse3d_wf.sub_01_wf.icl"), "end")
    lines = [r.getMessage() for r in caplog.records if r.name == "neuroverse3d.progress"]
    assert "[1/2] sub-01 | ds_mask: done" in lines
    assert any(line.startswith("[2/2] sub-01 | icl: finished in 0.") for line in lines)
    assert not any("-0.0" in line or " -" in line.split("in")[-1] for line in lines)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_live_display_on_a_terminal(console, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("TERM", "xterm")
    console(0)
    assert logs.stderr_is_terminal()
    reporter = progress.ProgressReporter(totals={"sub-01": 2, "sub-02": 2, "context sub-03": 1},
                                     live=True)
    with reporter:
        reporter(_node("wf.context_set_wf.context_sub_03_wf.register"), "start")
        reporter(_node("wf.context_set_wf.context_sub_03_wf.register"), "end")
        reporter(_node("wf.sub_01_wf.register"), "start")
        reporter(_node("wf.sub_01_wf.register"), "end")
        logging.getLogger("neuroverse3d").warning("disk almost full")
        print("a line printed during the run")
        lines = reporter.display.lines()
    assert sys.stdout is terminal  # restored
    text = terminal.getvalue()
    # one line per participant (context pairs share one) and a total, redrawn in place
    assert [line.split()[0] for line in lines] == ["context", "sub-01", "sub-02", "total"]
    assert "1/2" in lines[1] and "left" in lines[1] and "waiting" in lines[2]
    assert "2/5" in lines[3]
    assert "\x1b[" in text  # cursor movement: redrawn, not appended
    assert "WARNING neuroverse3d: disk almost full" in text
    assert "a line printed during the run\n" in text
    assert "| register: finished" not in text  # per-node lines are left to the file


def test_worker_records_reach_the_log_file_not_the_console(tmp_path):
    """A real MultiProc run (forkserver workers): Nipype's [Node] lines of the workers end up
    in the run's log file; the console has the progress lines only."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import argparse
        from nipype.interfaces import utility as niu
        from nipype.pipeline import engine as pe
        from neuroverse_bids import logs, progress
        from neuroverse_bids.execution import register_plugin, reporting

        def add(a):
            return a + 1

        if __name__ == "__main__":
            logs.setup_console(0)
            log_file = logs.setup_run_logging({str(tmp_path / 'out')!r}, argparse.Namespace(),
                                              run_id="w")
            wf = pe.Workflow(name="neuroverse3d_wf", base_dir={str(tmp_path / 'work')!r})
            for sub in ("01", "02"):
                node = pe.Node(niu.Function(function=add, input_names=["a"],
                                            output_names=["out"]), name=f"sub_{{sub}}_add")
                node.inputs.a = 1
                inner = pe.Workflow(name=f"sub_{{sub}}_wf")
                inner.add_nodes([node])
                wf.add_nodes([inner])
            register_plugin()
            plugin = {{"plugin": "SafeMultiProc", "plugin_args": {{
                "n_procs": 2, "mp_context": "forkserver", "log_file": str(log_file)}}}}
            with reporting(plugin, wf) as settings:
                wf.run(**settings)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=dict(os.environ, TERM="dumb"))
    assert result.returncode == 0, result.stderr
    console_text = result.stdout + result.stderr
    assert "[Node]" not in console_text and "nipype.workflow INFO" not in console_text
    assert "sub-01 | sub_01_add: finished in" in result.stderr
    assert ": started" not in result.stderr  # one line per node on the console
    log_text = (tmp_path / "out" / "logs" / "neuroverse3d_w.log").read_text()
    assert '[Node] Executing "sub_01_add"' in log_text  # written by a worker process
    assert "sub-01 | sub_01_add: started" in log_text


def test_each_run_logs_to_its_own_file_with_its_configuration(tmp_path):
    args = argparse.Namespace(bids_dir=tmp_path / "bids", participant_label=["01"], nprocs=2)
    log_file = logs.setup_run_logging(tmp_path / "out", args, run_id="test1")
    assert log_file == tmp_path / "out/logs/neuroverse3d_test1.log"
    config = json.loads((tmp_path / "out/logs/neuroverse3d_test1_config.json").read_text())
    assert config["Arguments"] == {"bids_dir": str(tmp_path / "bids"), "participant_label": ["01"],
                                   "nprocs": 2}
    assert config["RunId"] == "test1" and config["Versions"]["nipype"]
    logging.getLogger("neuroverse3d").warning("a message for the file")
    second = logs.setup_run_logging(tmp_path / "out", args, run_id="test2")
    logging.getLogger("neuroverse3d").warning("only in the second")
    assert "a message for the file" in log_file.read_text()
    assert "only in the second" not in log_file.read_text()
    assert "only in the second" in second.read_text()
    assert logs.current_log_file() == second
