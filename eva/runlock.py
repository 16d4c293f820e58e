"""One writer per run directory: an exclusive lock on `<run>/run.lock`, held while a command writes.

`eva run`, `eva resume` and `eva eval` take it before they write anything into a run directory and
hold it until they end; a second writer fails at once (`RunLockedError`, exit 2) naming the holder
recorded in the file: pid, host, start time and command. Readers (status, inspect, diff, export,
report) never take it.

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on the file. The kernel releases it when its holder
dies, however it dies (SIGKILL included), so a lock file left by a killed process is not held: the
next writer takes it over and says whose it was (`RunLock.taken_over`). A lock file whose flock *is*
held although its recorded holder is dead on this host was inherited by a child process (a fork that
kept the file open): it is refused, with how to find that process.

Shared storage. On Linux NFS clients (NFSv4, or v3 with lockd) flock() is emulated with a POSIX
byte-range lock on the whole file, which the server arbitrates, so writers on different hosts exclude
each other. Not with the `nolock` or `local_lock=flock|all` mount options, and not on FUSE-mounted
buckets (s3fs, gcsfuse): there the lock only excludes writers on the same host. If a host holding the
lock loses the server (a crash, a partition), the server drops its lock when the host's lease expires
(NFSv4: about 90 s) and another writer may take over while a partitioned process still runs. The lock
is advisory: only eva's commands honour it. Because of the POSIX emulation, the holding process must
never open and close the lock file a second time (closing any descriptor of it releases the lock on
NFS): this class reads and writes the holder record through its one descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from eva.atomic import make_dirs

LOCK_FILE = "run.lock"


class RunLockedError(Exception):
    """Another process holds the run directory's lock, or the storage cannot lock; the message says which."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a run directory's lock, as recorded in the lock file."""

    pid: int
    host: str
    started: str
    command: str

    @classmethod
    def parse(cls, raw: bytes) -> LockHolder | None:
        """The record in a lock file; None for an empty or unreadable one."""
        try:
            data = json.loads(raw.decode("utf-8"))
            return cls(int(data["pid"]), str(data["host"]), str(data["started"]), str(data["command"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started} ({self.command})"

    def alive(self) -> bool | None:
        """Whether the recorded process still runs; None when it ran on another host (unknowable here)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        return True


class RunLock:
    """The writer lock of the run directory `root` (a context manager; see the module docstring).

    `taken_over` is the holder recorded by a process that died holding the lock (set by `acquire`
    when it took the lock over), else None; `takeover_message()` says it in a sentence.
    """

    def __init__(self, root: str | Path, command: str) -> None:
        self.path = Path(root) / LOCK_FILE
        self.command = command
        self.taken_over: LockHolder | None = None
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise RunLockedError naming its holder. Creates the run directory's folder."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        make_dirs(self.path.parent)
        for _ in range(10):  # retried only when a releasing holder deleted the file we opened
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._lock(fd)
                if self._same_file(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        else:
            raise RunLockedError(
                f"{self.path}: could not take the lock: the file keeps being replaced by other processes"
            )
        previous = LockHolder.parse(os.pread(fd, 1 << 16, 0))
        self.taken_over = previous  # a record left in a lock nobody held: its writer died holding it
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Delete the lock file and release the lock (deleted while still held, so a process that
        opened the old file notices it is gone and retries with a new one)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def takeover_message(self) -> str | None:
        if self.taken_over is None:
            return None
        h = self.taken_over
        if h.alive() is None:
            why = (
                f"no process holds it any more (it ended, or host {h.host} lost its lease on the storage); if that "
                "process still runs, this storage does not share locks between hosts: stop one of them"
            )
        elif h.alive():
            why = "that process id is in use again, but not by the lock's holder (the lock was free)"
        else:
            why = "that process is gone: it was killed or crashed before it could release the lock"
        return f"took over the lock of {self.path.parent}, left by {h.describe()}: {why}"

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(self._held_message(LockHolder.parse(os.pread(fd, 1 << 16, 0)))) from None
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise RunLockedError(
                    f"{self.path}: the storage of this run directory cannot lock files ({e.strerror}): mount "
                    f"it with lock "
                    "support (NFSv4, or NFSv3 with lockd; not `nolock`) so two writers cannot damage a run"
                ) from None
            raise

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _held_message(self, holder: LockHolder | None) -> str:
        where = self.path.parent
        if holder is None:
            return (
                f"{where} is in use by another eva process (it has not recorded itself in {self.path} yet); wait "
                f"for it to finish"
            )
        if holder.alive() is False:
            return (
                f"{where} is locked: {self.path} is held by a process that inherited it from "
                f"{holder.describe()}, which is "
                f"gone. Find the process that still has the file open (`fuser -v {self.path}` or `lsof "
                f"{self.path}`), stop it, "
                "and try again"
            )
        return f"{where} is in use by another writer: {holder.describe()}. Wait for it to finish, or stop it first"


def read_holder(root: str | Path) -> LockHolder | None:
    """The holder recorded in a run directory's lock file, for display (`eva status`); None when no
    lock file exists. A recorded holder may be stale (see `RunLock.taken_over`); this does not lock."""
    try:
        return LockHolder.parse((Path(root) / LOCK_FILE).read_bytes())
    except OSError:
        return None


def _now() -> str:
    return datetime.fromtimestamp(time.time(), timezone.utc).isoformat(timespec="seconds")
