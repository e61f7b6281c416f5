"""The per-job log: warnings reach it, and a full disk is one line naming the path."""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

import numpy as np
import pytest

from n2vpipe.errors import DiskFullError, reporting_disk_full
from n2vpipe.jobs import job_logging


def test_numpy_warnings_reach_the_job_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "job.log"
    with job_logging(log), np.errstate(invalid="warn"), warnings.catch_warnings():
        warnings.simplefilter("always")
        np.sqrt(np.array([-1.0]))
    assert "RuntimeWarning: invalid value encountered in sqrt" in log.read_text()


def test_a_full_disk_is_the_first_error_line_naming_the_path(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    target = tmp_path / "results" / "acq" / "model" / "weights.pt"
    with pytest.raises(DiskFullError), job_logging(log), reporting_disk_full(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert errors[0].endswith(f"{target}: no space left on device (No space left on device); free space there "
                              "or point results_dir elsewhere, then rerun")
    assert "Traceback" not in log.read_text()


def test_other_os_errors_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), reporting_disk_full(tmp_path):
        raise PermissionError(errno.EACCES, "Permission denied")
