"""Shared fixtures: repository paths and a runner for real snakemake subprocesses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mounts import tmpfs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (where the Snakefile is)."""
    return REPO


def run_snakemake(args: list[str], cwd: Path = REPO, timeout: int = 900,
                  expect_success: bool = True) -> subprocess.CompletedProcess[str]:
    """Run snakemake as a user would, in a subprocess; fail the test on error unless told not to."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if expect_success and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (mode bits do not stop root; a read-only mount does)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    with tmpfs(mount, "ro,size=1m"):
        yield mount


HOLD_RESULTS_LOCK = """
import sys, time
from n2vpipe.lock import acquire_results_lock
acquire_results_lock(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def results_lock_holder() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Starts a separate process that takes the results lock on a folder and holds it until killed
    (at the latest when the test ends); returns once the lock is held."""
    holders: list[subprocess.Popen[str]] = []

    def hold(results: Path) -> subprocess.Popen[str]:
        process = subprocess.Popen([sys.executable, "-c", HOLD_RESULTS_LOCK, str(results)], stdout=subprocess.PIPE,
                                   text=True)
        holders.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in holders:
        process.kill()
        process.wait()
