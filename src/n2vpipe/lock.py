"""The results lock: one run at a time may write into a ``results_dir``.

A run holds an exclusive ``flock`` on ``results_dir/.n2vpipe.lock`` from the
moment its workflow is parsed until its process ends, and writes who it is
(host, pid, start time, working directory, command) into the file. A second run
on the same results (another clone, a person beside cron) is refused with that
holder named. The kernel releases the lock when the holding process ends, however it
ends, so a crashed or killed run leaves no lock behind; it does leave its holder
record, which the next run reports as an interrupted run whose work it resumes.

Standard library only: the workflow takes the lock at parse time.
"""

from __future__ import annotations

import atexit
import datetime
import fcntl
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

LOCK_FILE = ".n2vpipe.lock"


class ResultsLocked(RuntimeError):
    """Another run holds the results lock; the message names it."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a results lock."""

    host: str
    pid: int
    started: str
    workdir: str
    command: str

    @classmethod
    def this_process(cls) -> LockHolder:
        """The holder record of the running process."""
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), started, os.getcwd(), " ".join(sys.argv))

    def describe(self) -> str:
        """One phrase naming the holder, for messages."""
        return f"pid {self.pid} on {self.host}, started {self.started} in {self.workdir} ({self.command})"


def read_holder(handle: IO[str]) -> LockHolder | None:
    """The holder record in an open lock file, or ``None`` when it is empty or unreadable."""
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "null")
        return LockHolder(**record) if isinstance(record, dict) else None
    except (json.JSONDecodeError, TypeError):
        return None


@dataclass
class ResultsLock:
    """The held lock on one results folder; released when the process ends (or by :meth:`release`)."""

    path: Path
    handle: IO[str]
    previous: LockHolder | None

    def release(self) -> None:
        """Clear the holder record and drop the lock (a clean end: the next run finds no record)."""
        if self.handle.closed:
            return
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.flush()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def acquire_results_lock(results_dir: Path) -> ResultsLock:
    """Take the lock on ``results_dir`` (created if missing) for the rest of this process.

    Raises :class:`ResultsLocked` naming the holder when another run has it. The
    returned lock's ``previous`` is the record of a run that ended without releasing
    it (crashed, killed): the caller reports it.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / LOCK_FILE
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(handle)
        handle.close()
        who = holder.describe() if holder else "a run that has not written its name yet"
        raise ResultsLocked(
            f"{results_dir.resolve()} is in use by another n2vpipe run: {who}. Two runs on the same "
            f"results could damage each other's work: wait for that run to end and start this one again "
            f"(the lock is {path}; it frees itself when that process ends)") from None
    previous = read_holder(handle)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(asdict(LockHolder.this_process())) + "\n")
    handle.flush()
    lock = ResultsLock(path, handle, previous)
    atexit.register(lock.release)
    return lock


def holder_of(results_dir: Path) -> LockHolder | None:
    """The run holding the lock on ``results_dir`` now, or ``None`` when it is free (no side effects beyond
    opening the lock file when it exists)."""
    path = Path(results_dir) / LOCK_FILE
    if not path.exists():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(handle) or LockHolder("?", 0, "?", "?", "?")
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
