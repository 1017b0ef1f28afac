"""Fail-safe runs: a reused work folder, a full disk, SIGINT/SIGTERM, and a light ``--help``.

The end-to-end tests reuse the session's ``app_run`` (its work folder is the cache they reuse);
the full-disk test mounts a small tmpfs and is skipped where that is not allowed (not root)."""
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.errors import RunInterrupted, run_with_exit_codes, stop_on_signals
from neuroverse_bids.execution import disk_full_in
from neuroverse_bids.workflows.errors import DiskFullError
from neuroverse_bids.workflows.niftiio import write_atomic

#: console lines of the progress (one per node, one per finished participant)
PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d (\[\d+/[\d?]+\] |\S+: \d+ steps)")
HEAVY = ("torch", "nibabel", "nipype", "numpy", "scipy", "bids")


def _messages(stderr: str):
    """stderr without the progress lines: what the run says."""
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]


def _derivatives(folder: Path):
    return _outputs(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _outputs(paths):
    """Relative output paths, without the run's logs and the context cache."""
    return sorted(p for p in paths if not {"logs", "cache"} & set(Path(p).parts))


def _first_run(app_run):
    """What the shared first participant run wrote (other tests add group-level files later)."""
    return _outputs(app_run["first_outputs"])


def _assert_no_partial_files(folder: Path):
    hidden = [p for p in folder.rglob(".*") if p.is_file() and ".tmp" in p.name]
    assert not hidden, f"temporary files left: {hidden}"
    for path in folder.rglob("*.nii.gz"):
        np.asanyarray(nb.load(str(path)).dataobj)  # a truncated file raises


def _command(demo, out, work, *extra):
    return ["neuroverse3d", str(demo / "bids"), str(out), "participant",
            "--participant-label", "01", "sub-02", "--context-spec", str(demo / "context-spec.json"),
            "--sloppy", "-w", str(work), "--nprocs", "2", "--precision", "float32",
            "--device", "cpu", *extra]


def _env(demo):
    return dict(os.environ, TEMPLATEFLOW_HOME=str(demo / "templateflow"))


# --------------------------------------------------------------------------- --help is light
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["bids"], ["--nprocs", "x"]])
def test_help_version_and_usage_errors_import_nothing_heavy(argv, tmp_path):
    code = ("import sys\nfrom neuroverse_bids.cli.run import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    # outside the source tree, so that the installed package is imported
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1:] == ["[]"], result.stdout[-500:] + result.stderr[-1500:]


def test_the_parsers_choices_are_the_registries():
    from neuroverse_bids import context_spec
    from neuroverse_bids.cli import parser
    from neuroverse_bids.model.degradations import DEGRADATIONS
    from neuroverse_bids.model.strategies import strategy_names

    choices = {a.dest: a.choices for a in parser.build_parser()._actions}
    assert tuple(choices["context_selection"]) == strategy_names()
    assert {"random", "similar"} <= set(strategy_names())
    assert parser.DEGRADATIONS == tuple(DEGRADATIONS)
    assert parser.DEFAULT_NUM_CONTEXTS == context_spec.DEFAULT_NUM_CONTEXTS


# --------------------------------------------------------------------------- a full disk, in parts
def test_a_full_disk_is_one_error_with_the_free_space_and_no_partial_file(tmp_path):
    target = tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz"

    def fill(tmp):
        Path(tmp).write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(DiskFullError) as caught:
        write_atomic(target, fill, size_hint=3 * 1024 ** 2)
    message = str(caught.value)
    assert caught.value.exit_code == 73 and "\n" not in message
    assert message.startswith(f"{target}: cannot write here: No space left on device (")
    assert "3.0 MB needed" in message
    assert re.search(r"\d+\.\d (KB|MB|GB|TB) free", message)
    assert list(target.parent.iterdir()) == []  # no partial file


def test_disk_full_is_found_in_a_nodes_traceback():
    text = ("Traceback ...\nneuroverse_bids.workflows.errors.DiskFullError: /o/x.nii.gz: "
            "cannot write here: No space left on device (1.0 KB free, about 2.0 MB needed)\n")
    assert str(disk_full_in(text)).startswith("/o/x.nii.gz: cannot write here: No space left")
    found = disk_full_in("OSError: [Errno 28] No space left on device: '/w/node/a.nii'")
    assert str(found).startswith("/w/node/a.nii: cannot write here: No space left on device (")
    assert found.exit_code == 73
    quota = disk_full_in("OSError: [Errno 122] Disk quota exceeded: '/w/b.nii'")
    assert str(quota).startswith("/w/b.nii: cannot write here: Disk quota exceeded (")
    assert str(disk_full_in("OSError: [Errno 28] No space left on device", fallback="/w/n")) \
        .startswith("/w/n: ")
    assert disk_full_in("ValueError: Errno 28") is None


def test_an_oserror_of_a_full_disk_exits_73_with_one_line(capsys):
    def fails():
        raise OSError(errno.ENOSPC, "No space left on device", "/some/file")

    assert run_with_exit_codes("prog", fails) == 73
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("prog: error: /some/file: cannot write here: No space left on device")


def test_sigterm_raises_run_interrupted_with_143(capsys):
    with pytest.raises(RunInterrupted) as caught:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored

    def interrupted():
        raise caught.value

    assert run_with_exit_codes("prog", interrupted) == 143
    assert capsys.readouterr().err == "prog: interrupted by SIGTERM (a job's time limit, or kill)\n"


# --------------------------------------------------------------------------- end to end
def test_a_new_output_folder_reuses_the_work_folder(app_run, tmp_path):
    """The work folder is a cache: a run into another output folder reuses it (it used to exit 1:
    cached nodes handed on the paths of the first output folder) and writes every derivative."""
    out = tmp_path / "out"
    result, seconds = app_run["run"](app_run["demo"], out, app_run["work"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _derivatives(out) == _first_run(app_run)
    for name in _derivatives(out):
        if name.endswith(".nii.gz"):
            new, old = nb.load(str(out / name)), nb.load(str(app_run["out"] / name))
            assert np.array_equal(np.asanyarray(new.dataobj), np.asanyarray(old.dataobj)), name
    print(f"first run {app_run['first_seconds']:.1f} s, new output folder {seconds:.1f} s")
    assert seconds < app_run["first_seconds"]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only; skipped elsewhere); yields (folder, remount(size))."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")

    def remount(size: str):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    yield folder, remount
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_output_disk_exits_73_with_one_line_and_resumes(app_run, small_disk):
    disk, remount = small_disk
    out, demo = disk / "out", app_run["demo"]
    command = _command(demo, out, app_run["work"], "--context-cache",
                       str(app_run["out"] / "cache" / "context-sets"))
    result = subprocess.run(command, capture_output=True, text=True, env=_env(demo), timeout=900)
    messages = _messages(result.stderr)
    assert result.returncode == 73, result.stderr[-3000:]
    assert len(messages) == 1, messages
    assert re.match(rf"neuroverse3d: error: {re.escape(str(out))}/\S+: cannot write here: No "
                    r"space left on device \(\d+\.\d (KB|MB) free, about \d+\.\d (KB|MB) "
                    r"needed\); free space", messages[0]), messages[0]
    _assert_no_partial_files(out)

    remount("200m")  # space freed: the same command finishes
    again = subprocess.run(command, capture_output=True, text=True, env=_env(demo), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _derivatives(out) == _first_run(app_run)


def _interrupt(command, env, signum) -> (subprocess.CompletedProcess, float):
    """Start ``command`` in its own process group, send ``signum`` to the whole group (as a
    terminal's Ctrl-C and SLURM's time limit do) once the participants' nodes run."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
    seen = []
    deadline = time.monotonic() + 900
    for line in process.stderr:
        seen.append(line)
        if re.search(r"\[\d+/\d+\] sub-\d+ \|", line) or time.monotonic() > deadline:
            break
    assert process.poll() is None, "".join(seen)[-3000:]
    os.killpg(process.pid, signum)
    start = time.monotonic()
    stdout, stderr = process.communicate(timeout=120)
    return (subprocess.CompletedProcess(command, process.returncode, stdout,
                                        "".join(seen) + stderr), time.monotonic() - start)


def test_sigint_and_sigterm_stop_with_one_line_and_the_same_command_resumes(app_run, tmp_path):
    demo, out, work = app_run["demo"], tmp_path / "out", tmp_path / "work"
    # the context set is shared; the participants' nodes are computed in the workers
    command = _command(demo, out, work, "--context-cache",
                       str(app_run["out"] / "cache" / "context-sets"))
    resume = None
    for signum, code, name in ((signal.SIGINT, 130, "Ctrl-C (SIGINT)"),
                               (signal.SIGTERM, 143, "SIGTERM")):
        result, seconds = _interrupt(command, _env(demo), signum)
        messages = _messages(result.stderr)
        assert result.returncode == code, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert len(messages) == 1, messages
        assert messages[0].startswith(f"neuroverse3d: interrupted by {name}")
        assert f"kept: the work folder {work}" in messages[0]
        resume = messages[0].split("resume with: ", 1)[1]
        assert resume == " ".join(command)  # nothing to quote here
        assert seconds < 60
        assert not (work / "neuroverse3d.lock").exists()
        _assert_no_partial_files(out)
    finished = subprocess.run(resume, shell=True, capture_output=True, text=True, env=_env(demo),
                              timeout=1200)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert _derivatives(out) == _first_run(app_run)
