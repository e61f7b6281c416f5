"""The errors a job reports as one line, naming what they are about: bad input, a full disk, and an
environment that cannot do what it was asked.

Anything else escaping a job is unexpected and is logged with its traceback
(:func:`n2vpipe.jobs.job_logging`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class InputError(ValueError):
    """An input file that cannot be used; the message names the file and the problem."""


class UnusableEnvironment(RuntimeError):
    """The job's machine or software cannot do what it was asked (a GPU torch cannot use); the message
    says why and what to do."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """An output could not be written for lack of space (or quota); the message names the path."""


SHORT_WRITE_FREE_BYTES = 2**20
"""A write that came up short (numpy's ``tofile``: "4096 requested and 3912 written", no errno)
counts as a full disk when less than this is left on the file system."""


def _free_bytes(path: Path) -> int:
    """Bytes left to unprivileged users on the file system that holds ``path`` (or its nearest parent)."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    stats = os.statvfs(existing)
    return stats.f_bavail * stats.f_frsize


def _is_disk_full(err: OSError, path: Path) -> bool:
    """Whether ``err``, raised while writing ``path``, means that its file system is full (or over quota)."""
    if err.errno in DISK_FULL_ERRNOS:
        return True
    return err.errno is None and _free_bytes(path) < SHORT_WRITE_FREE_BYTES


@contextlib.contextmanager
def reporting_disk_full(path: Path) -> Iterator[None]:
    """Re-raise "no space left on device" (or over quota) while writing ``path`` as a
    :class:`DiskFullError` that names it: the operating system's error names no file."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if not _is_disk_full(err, path):
            raise
        reason = err.strerror or str(err)
        raise DiskFullError(errno.ENOSPC, f"{path}: no space left on device ({reason}); free space there "
                                          "or point results_dir elsewhere, then rerun") from err
