"""Fixtures for the HPC tests: a copy of the workflow, tiny inputs and configs, real snakemake runs,
and a real one-node SLURM cluster (tests/slurm/cluster.sh) for tests marked ``slurm``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKFLOW_PATHS = ("Snakefile", "workflow", "config", "profiles", "slurm", "envs", "src/n2vpipe")

# Small enough that a whole run of one acquisition takes seconds on 2 cores.
TINY_CONFIG = {
    "ingest": {"chunks": {"z": 16, "y": 64, "x": 64}},
    "train": {"steps": 4, "base_filters": 4, "patch": {"z": 8, "y": 32, "x": 32}, "batch_size": 2,
              "validation_patches": 2, "validate_every": 2, "checkpoint_every": 2, "pool_tiles": 2,
              "max_minutes": 0},
    "predict": {"block": {"z": 16, "y": 64, "x": 64}, "pyramid_levels": 1},
    "threads": {"ingest": 1, "train": 1, "predict": 1, "report": 1},
    "resources": {name: {"mem_mb": 300, "runtime": 5} for name in ("ingest", "train", "predict", "report")},
}


def write_volume(path: Path, seed: int = 0, shape: tuple[int, int, int] = (16, 64, 64)) -> Path:
    """A small noisy uint16 ZYX TIFF with some structure."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 3 * np.pi, n) for n in shape), indexing="ij")
    clean = 200 + 100 * (np.sin(x + seed) * np.cos(y) + np.sin(z))
    noisy = rng.poisson(np.clip(clean, 1, None)).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, noisy, imagej=True, metadata={"axes": "ZYX"})
    return path


def copy_workflow(dest: Path) -> Path:
    """A copy of the repository's workflow files (what a user runs) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in WORKFLOW_PATHS:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / rel)
    return dest


def write_config(path: Path, input_dir: Path, results_dir: Path, **sections: object) -> Path:
    """TINY_CONFIG plus input/results folders plus ``sections`` (replacing top-level keys)."""
    config = {**TINY_CONFIG, "input_dir": str(input_dir), "results_dir": str(results_dir), **sections}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def subprocess_env() -> dict[str, str]:
    """The environment for subprocesses: this virtualenv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def snakemake(workdir: Path, *args: str, timeout: int = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``snakemake ARGS`` in ``workdir`` (as a user would, in the repo root), bounded by ``timeout -k``."""
    command = ["timeout", "-k", "10", str(timeout), str(BIN / "snakemake"), *args]
    return subprocess.run(command, cwd=workdir, env=env or subprocess_env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr of a finished run, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
WILDCARD_ACQ = re.compile(r"^\s+wildcards: .*\bacq=([^,\s]+)")


def jobs_in(text: str) -> set[tuple[str, str]]:
    """(rule, acquisition) of every job a snakemake run printed (rule ``all`` left out)."""
    jobs: set[tuple[str, str]] = set()
    rule = None
    for line in text.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            rule = header.group(1)
            continue
        acq = WILDCARD_ACQ.match(line)
        if acq and rule:
            jobs.add((rule, acq.group(1)))
            rule = None
    return jobs


def planned_jobs(workdir: Path, *args: str) -> set[tuple[str, str]]:
    """The (rule, acquisition) jobs ``snakemake -n ARGS`` would run."""
    result = snakemake(workdir, "-n", "--cores", "2", *args)
    assert result.returncode == 0, output_of(result)
    return jobs_in(result.stdout + result.stderr)


def expand_jobs(rules: Sequence[str], acqs: Sequence[str]) -> set[tuple[str, str]]:
    """Every (rule, acquisition) pair."""
    return {(rule, acq) for rule in rules for acq in acqs}


ALL_RULES = ("ingest", "noise_check", "train", "predict_part", "predict", "qc_metrics", "export_tiff", "qc_figure")


# ---------------------------------------------------------------- SLURM


def _slurm_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (SlurmUser=root)"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "mariadbd")
               if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"SLURM binaries missing ({', '.join(missing)}); run: bash tests/slurm/cluster.sh install"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """A real one-node SLURM cluster on localhost; yields the environment to talk to it."""
    reason = _slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    # Short path: the cluster's unix sockets must stay under 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="n2vslurm-", dir="/tmp"))
    state = base / "c"
    script = REPO / "tests" / "slurm" / "cluster.sh"
    started = subprocess.run(["timeout", "-k", "10", "180", "bash", str(script), "start", str(state)],
                             capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(f"could not start the SLURM test cluster:\n{started.stderr[-4000:]}")
    env = subprocess_env()
    for line in (state / "env.sh").read_text().splitlines():
        match = re.fullmatch(r"export (\w+)=(.*)", line)
        if match:
            env[match.group(1)] = match.group(2).strip("'\"")
    try:
        yield env
    finally:
        subprocess.run(["timeout", "-k", "10", "180", "bash", str(script), "stop", str(state)],
                       capture_output=True, text=True)
        shutil.rmtree(base, ignore_errors=True)
