"""Real snakemake runs: two runs on one results folder, a killed run, and an input replaced behind an old mtime."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from n2vpipe.io import open_ome_zarr
from n2vpipe.lock import LOCK_FILE, holder_of

from .conftest import (
    BIN,
    TINY_CONFIG,
    copy_workflow,
    jobs_in,
    output_of,
    snakemake,
    subprocess_env,
    write_config,
    write_volume,
)

pytestmark = pytest.mark.workflow
# Long enough training that a second run starts while the first still holds the results.
SLOW_TRAIN = {**TINY_CONFIG["train"], "steps": 400, "checkpoint_every": 50, "validate_every": 50}


def _start_run(workdir: Path, config: Path) -> subprocess.Popen[str]:
    """A snakemake run in the background, in its own process group."""
    return subprocess.Popen([str(BIN / "snakemake"), "--configfile", str(config), "--cores", "1"], cwd=workdir,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_holder(results: Path, process: subprocess.Popen[str], timeout_s: float = 120) -> int:
    """The pid that holds the results lock, once the run has taken it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        holder = holder_of(results) if (results / LOCK_FILE).exists() else None
        if holder is not None and holder.pid:
            return holder.pid
        assert process.poll() is None, f"the first run ended early:\n{process.stdout.read()}"
        time.sleep(0.2)
    pytest.fail("the first run never took the results lock")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_second_clone_is_refused_while_a_run_holds_the_results(tmp_path: Path) -> None:
    inputs, results = tmp_path / "in", tmp_path / "results"
    write_volume(inputs / "vol.tif")
    clones = [copy_workflow(tmp_path / name) for name in ("clone_a", "clone_b")]
    configs = [write_config(clone / "my.yaml", inputs, results, train=SLOW_TRAIN) for clone in clones]
    first = _start_run(clones[0], configs[0])
    try:
        holder_pid = _wait_for_holder(results, first)
        second = snakemake(clones[1], "--configfile", str(configs[1]), "--cores", "1")
        assert second.returncode != 0
        refusal = [line for line in second.stderr.splitlines() if "in use by another n2vpipe run" in line]
        assert refusal and f"pid {holder_pid} on {os.uname().nodename}" in refusal[0], output_of(second)
        assert "clone_a" in refusal[0], "the holder's working directory is named"
        assert jobs_in(second.stdout + second.stderr) == set(), "the refused run started no job"
        first_output, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, first_output
    assert (results / "vol" / "model" / "weights.pt").is_file(), "the refused run deleted nothing"
    weights = _digest(results / "vol" / "model" / "weights.pt")
    again = snakemake(clones[1], "--configfile", str(configs[1]), "--cores", "1")
    assert again.returncode == 0, output_of(again)
    assert jobs_in(again.stdout + again.stderr) == set(), "the finished results are left alone"
    assert _digest(results / "vol" / "model" / "weights.pt") == weights


def test_a_killed_run_leaves_no_lock_and_the_next_run_finishes_its_work(tmp_path: Path) -> None:
    inputs, results = tmp_path / "in", tmp_path / "results"
    write_volume(inputs / "vol.tif")
    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir / "my.yaml", inputs, results, train=SLOW_TRAIN)
    first = _start_run(workdir, config)
    holder_pid = _wait_for_holder(results, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert holder_of(results) is None, "the kernel freed the results lock with the process"
    # Snakemake's own lock on its working directory outlives a SIGKILL; its documented remedy:
    unlocked = snakemake(workdir, "--configfile", str(config), "--unlock")
    assert unlocked.returncode == 0, output_of(unlocked)
    assert f"pid {holder_pid}" in unlocked.stderr and "ended without finishing" in unlocked.stderr, \
        "the first run after the kill reports it"
    rerun = snakemake(workdir, "--configfile", str(config), "--cores", "1", "--rerun-incomplete")
    assert rerun.returncode == 0, output_of(rerun)
    assert (results / "vol" / "denoised.ome.zarr").is_dir()


def test_an_input_replaced_behind_an_older_mtime_is_ingested_again(tmp_path: Path) -> None:
    inputs, results = tmp_path / "in", tmp_path / "results"
    source = write_volume(inputs / "vol.tif", seed=0)
    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir / "my.yaml", inputs, results)
    first = snakemake(workdir, "--configfile", str(config), "--cores", "2")
    assert first.returncode == 0, output_of(first)
    assert (results / "vol" / "source.json").is_file()

    os.chmod(source, 0o600)  # a new ctime, the same content: nothing reruns
    unchanged = snakemake(workdir, "--configfile", str(config), "--cores", "2")
    assert unchanged.returncode == 0, output_of(unchanged)
    assert jobs_in(unchanged.stdout + unchanged.stderr) == set(), output_of(unchanged)

    other = write_volume(tmp_path / "elsewhere" / "vol.tif", seed=5)
    assert other.stat().st_size == source.stat().st_size
    old = source.stat().st_mtime - 3600
    os.utime(other, (old, old))
    shutil.copy2(other, source)  # cp -p: other content behind an older mtime
    plan = snakemake(workdir, "--configfile", str(config), "--cores", "2", "-n")
    assert "has other content than when it was ingested; a real run re-ingests it" in plan.stdout + plan.stderr, \
        output_of(plan)
    assert (results / "vol" / "denoised.ome.zarr").is_dir(), "a dry run withdraws nothing"

    rerun = snakemake(workdir, "--configfile", str(config), "--cores", "2")
    assert rerun.returncode == 0, output_of(rerun)
    assert "has other content than when it was ingested" in rerun.stderr
    assert {"ingest", "train", "predict"} <= {rule for rule, _ in jobs_in(rerun.stdout + rerun.stderr)}
    raw, _ = open_ome_zarr(results / "vol" / "raw.ome.zarr")
    assert np.array_equal(raw[:], tifffile.imread(other)), "raw.ome.zarr holds the new content"
