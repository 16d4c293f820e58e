"""The run directory's writer lock: one holder, the holder named, a dead holder's lock taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eva.checkpoint import RunDir
from eva.runlock import LOCK_FILE, LockHolder, RunLock, RunLockedError, read_holder

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from eva.runlock import RunLock
lock = RunLock(sys.argv[1], "eva run --test-holder")
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder_process(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "run"
    proc = _holder_process(root)
    try:
        with pytest.raises(RunLockedError) as err:
            RunLock(root, "eva resume").acquire()
        message = str(err.value)
        assert f"pid {proc.pid} on {socket.gethostname()}" in message and "eva run --test-holder" in message
        holder = read_holder(root)
        assert holder is not None and holder.pid == proc.pid and holder.alive() is True
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over_with_its_name(tmp_path: Path) -> None:
    root = tmp_path / "run"
    proc = _holder_process(root)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to release: the record stays, the kernel drops the flock
    proc.wait()
    assert read_holder(root).pid == proc.pid
    with RunLock(root, "eva resume") as lock:
        assert lock.taken_over is not None and lock.taken_over.pid == proc.pid
        message = lock.takeover_message()
        assert f"pid {proc.pid}" in message and "eva run --test-holder" in message and "killed or crashed" in message
        assert read_holder(root).pid == os.getpid() and read_holder(root).command == "eva resume"
    assert not (root / LOCK_FILE).exists()  # released: the file is gone


def test_release_then_a_clean_acquire_takes_nothing_over(tmp_path: Path) -> None:
    with RunLock(tmp_path, "eva run") as lock:
        assert lock.taken_over is None and lock.takeover_message() is None
        with pytest.raises(RunLockedError, match="in use by another writer"):  # a second descriptor, same process
            RunLock(tmp_path, "eva eval").acquire()
    with RunLock(tmp_path, "eva eval") as lock:
        assert lock.taken_over is None


def test_flock_held_by_an_heir_of_a_dead_holder_is_refused_with_how_to_find_it(tmp_path: Path) -> None:
    """A child that inherited the descriptor keeps the flock after the recorded holder died."""
    import fcntl

    path = tmp_path / LOCK_FILE
    record = {
        "pid": _dead_pid(),
        "host": socket.gethostname(),
        "started": "2026-01-01T00:00:00+00:00",
        "command": "eva run",
    }
    path.write_text(json.dumps(record))
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # stands in for the heir
    try:
        with pytest.raises(RunLockedError, match=r"inherited it from pid \d+ .* gone.*fuser -v"):
            RunLock(tmp_path, "eva resume").acquire()
    finally:
        os.close(fd)
    with RunLock(tmp_path, "eva resume") as lock:  # the heir is gone: the stale record is taken over
        assert lock.taken_over is not None and lock.taken_over.pid == record["pid"]
        assert "gone" in lock.takeover_message()


def test_stale_record_of_another_host_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    record = {"pid": 4242, "host": "some-other-node", "started": "2026-01-01T00:00:00+00:00", "command": "eva run"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with RunLock(tmp_path, "eva resume") as lock:
        assert lock.taken_over == LockHolder(4242, "some-other-node", "2026-01-01T00:00:00+00:00", "eva run")
        assert lock.taken_over.alive() is None
        assert "some-other-node" in lock.takeover_message() and "does not share locks" in lock.takeover_message()


def test_run_dir_lock_lives_in_the_run_directory(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "new" / "run")
    with run.lock("eva run"):
        assert (run.root / LOCK_FILE).is_file()
        assert run.foreign_entries() == []  # a folder holding only the lock may still become a run directory
