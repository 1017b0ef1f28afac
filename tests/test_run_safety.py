"""Run safety: MultiProc workers die with the main process; one live run per work folder."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from neuroverse_bids import locks
from neuroverse_bids.locks import WorkDirLock, WorkDirLockedError


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie nobody reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_main_process(tmp_path):
    """``kill -9`` of the main process (as the out-of-memory killer does) ends the forkserver
    workers within seconds instead of leaving them computing their nodes."""
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        from nipype.interfaces import utility as niu
        from nipype.pipeline import engine as pe
        from neuroverse_bids.execution import SafeMultiProcPlugin

        def work(folder, index):
            import os, time
            open(os.path.join(folder, str(os.getpid())), "w").close()
            time.sleep(300)
            return index

        if __name__ == "__main__":
            wf = pe.Workflow(name="wf", base_dir={str(tmp_path / 'work')!r})
            for index in range(2):
                node = pe.Node(niu.Function(function=work, input_names=["folder", "index"],
                                            output_names=["out"]), name=f"n{{index}}")
                node.inputs.folder, node.inputs.index = {str(pids)!r}, index
                wf.add_nodes([node])
            wf.run(plugin=SafeMultiProcPlugin({{"n_procs": 2, "mp_context": "forkserver"}}))
    """))
    main = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.monotonic() + 240
        while len(workers) < 2 and time.monotonic() < deadline and main.poll() is None:
            time.sleep(0.2)
            workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2, "the workers did not start"
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [pid for pid in workers if not _gone(pid)]
        assert not alive, f"workers {alive} outlived their main process"
    finally:
        for pid in workers:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        if main.poll() is None:
            main.kill()


HOLDER = textwrap.dedent("""
    import sys, time
    from neuroverse_bids.locks import WorkDirLock
    with WorkDirLock(sys.argv[1], "holder-run"):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def live_holder(tmp_path):
    """A process holding ``tmp_path/work``; yields (work folder, its PID)."""
    work = tmp_path / "work"
    work.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path)  # not the source tree: the installed package
    assert holder.stdout.readline().strip() == "locked"
    yield work, holder.pid
    holder.kill()
    holder.wait()


def test_a_held_work_folder_is_refused_naming_the_run(live_holder):
    work, pid = live_holder
    with pytest.raises(WorkDirLockedError) as info:
        WorkDirLock(work, "second").acquire()
    message = str(info.value)
    assert info.value.exit_code == 75
    assert f"PID {pid}" in message and socket.gethostname() in message
    assert "holder-run" in message and "started 20" in message and "-w" in message


def test_the_app_exits_75_on_a_held_work_folder(live_holder, tmp_path, capsys):
    from neuroverse_bids.cli.run import main

    work, pid = live_holder
    bids = tmp_path / "bids"
    bids.mkdir()
    code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(work),
                 "--mask", "brain", "--labels-dataset", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 75, err
    assert f"PID {pid}" in err and "in use" in err
    assert not (tmp_path / "out" / "logs").exists() or not list((tmp_path / "out" / "logs").glob("*.log"))


def test_a_refused_run_leaves_nothing_it_created(live_holder, tmp_path, capsys):
    """Exit 75 is decided before the output folder is made: nothing is left behind."""
    from neuroverse_bids.cli.run import main

    work, _ = live_holder
    bids = tmp_path / "bids"
    bids.mkdir()
    out = tmp_path / "new" / "out"
    code = main([str(bids), str(out), "participant", "-w", str(work),
                 "--mask", "brain", "--labels-dataset", str(tmp_path)])
    assert code == 75, capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in work.iterdir()) == ["neuroverse3d.lock"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_dead_runs_lock_is_taken_over(tmp_path, caplog):
    work = tmp_path / "work"
    work.mkdir()
    (work / locks.LOCK_NAME).write_text(json.dumps(
        {"run_id": "old-run", "host": socket.gethostname(), "pid": _dead_pid(),
         "started": "2026-01-01 00:00:00"}))
    with caplog.at_level("WARNING", logger="neuroverse3d"):
        with WorkDirLock(work, "new-run"):
            holder = json.loads((work / locks.LOCK_NAME).read_text())
            assert holder["pid"] == os.getpid() and holder["run_id"] == "new-run"
    assert "taking over the lock of run old-run" in caplog.text
    assert not (work / locks.LOCK_NAME).exists()  # released


def _no_file_locks(fd, **_):
    raise locks.NoFileLocks(errno.ENOLCK, "no locks on this file system")


def test_without_file_locks_the_recorded_pid_decides(tmp_path, monkeypatch):
    """File systems without POSIX locks: a live PID of this host holds, a dead one is taken
    over, another host's lock is respected."""
    monkeypatch.setattr(locks, "lock_file", _no_file_locks)
    work = tmp_path / "work"
    work.mkdir()
    path = work / locks.LOCK_NAME
    host = socket.gethostname()
    for pid, lock_host, refused in ((os.getppid(), host, True), (_dead_pid(), host, False),
                                    (_dead_pid(), "elsewhere", True)):
        path.write_text(json.dumps({"run_id": "r", "host": lock_host, "pid": pid}))
        if refused:
            with pytest.raises(WorkDirLockedError):
                WorkDirLock(work).acquire()
        else:
            WorkDirLock(work).acquire().release()


def test_a_second_lock_in_the_same_process_is_refused_and_the_first_kept(tmp_path):
    """POSIX locks never conflict within one process: the lock itself refuses a second hold of
    a folder this process holds, and the refusal leaves the first lock in place."""
    work = tmp_path / "work"
    work.mkdir()
    with WorkDirLock(work, "first-run"):
        with pytest.raises(WorkDirLockedError, match=f"first-run .* PID {os.getpid()}"):
            WorkDirLock(work / ".." / "work", "second").acquire()
        other = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom neuroverse_bids.locks import WorkDirLock\n"
             "try:\n    WorkDirLock(sys.argv[1]).acquire()\n"
             "except Exception as error:\n    sys.exit(error.exit_code)", str(work)],
            cwd=tmp_path, capture_output=True, text=True)
        assert other.returncode == 75, other.stderr
        assert json.loads((work / locks.LOCK_NAME).read_bytes())["run_id"] == "first-run"
    assert not (work / locks.LOCK_NAME).exists()
    WorkDirLock(work, "third").acquire().release()  # free again


def test_file_locks_shared_and_exclusive_across_processes(tmp_path):
    """The primitive: shared locks coexist, an exclusive one waits for them (non-blocking:
    False at once), and closing the descriptor releases the lock."""
    path = tmp_path / "entry.use"
    path.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom neuroverse_bids.locks import lock_file\n"
         "fd = os.open(sys.argv[1], os.O_RDWR)\nlock_file(fd, shared=True)\n"
         "print('held', flush=True)\nsys.stdin.readline()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        fd = os.open(path, os.O_RDWR)
        try:
            assert locks.lock_file(fd, blocking=False) is False
            assert locks.lock_file(fd, shared=True, blocking=False) is True
            locks.unlock_file(fd)
        finally:
            os.close(fd)
    finally:
        holder.stdin.close()  # the holder exits: its lock goes with it
        holder.wait(timeout=60)
    fd = os.open(path, os.O_RDWR)
    try:
        assert locks.lock_file(fd, blocking=False) is True
        assert locks.same_file(path, fd)
        path.unlink()
        assert not locks.same_file(path, fd)
    finally:
        os.close(fd)
