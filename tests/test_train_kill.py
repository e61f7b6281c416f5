"""Training killed with SIGKILL in a real process resumes from its checkpoint in the next process."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile
import torch

from n2vpipe.ingest import ingest_tiff
from n2vpipe.io import partial_path
from n2vpipe.train import CHECKPOINT_FILE, LOG_FILE
from synthetic import poisson_gaussian, smooth_blobs

TRAIN_SCRIPT = """
import json, sys
from n2vpipe.jobs import job_logging
from n2vpipe.train import TrainConfig, train_n2v
zarr_path, model_dir, log_file, settings = sys.argv[1:]
with job_logging(log_file):
    train_n2v(zarr_path, model_dir, TrainConfig.from_mapping(json.loads(settings)))
"""
SETTINGS = {"patch": {"y": 32, "x": 32}, "batch_size": 4, "base_filters": 4, "steps": 120, "validate_every": 5,
            "checkpoint_every": 10, "validation_patches": 2, "pool_tiles": 2, "device": "cpu"}


@pytest.fixture()
def raw_zarr_2d(tmp_path: Path) -> Path:
    tifffile.imwrite(tmp_path / "plane.tif", poisson_gaussian(smooth_blobs((128, 128), seed=0), seed=1))
    ingest_tiff(tmp_path / "plane.tif", tmp_path / "raw.ome.zarr", {"y": 32, "x": 32})
    return tmp_path / "raw.ome.zarr"


def _start_training(raw_zarr: Path, model_dir: Path, name: str) -> subprocess.Popen[bytes]:
    """Run training in a new Python process; its job log is ``<name>.log`` beside the model."""
    folder = model_dir.parent
    with open(folder / f"{name}.out", "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, str(raw_zarr), str(model_dir), str(folder / f"{name}.log"),
             json.dumps(SETTINGS)],
            stdout=output, stderr=subprocess.STDOUT,
        )


def _log_rows(log_csv: Path) -> list[list[str]]:
    """Rows of the training log, header left out."""
    return [line.split(",") for line in log_csv.read_text().split()[1:]]


def _kill_after_first_checkpoint(process: subprocess.Popen[bytes], checkpoint: Path, timeout_s: float = 120) -> None:
    """SIGKILL ``process`` as soon as ``checkpoint`` exists; fail if it ends or stalls before that."""
    deadline = time.monotonic() + timeout_s
    try:
        while not checkpoint.exists():
            if process.poll() is not None:
                pytest.fail(f"training ended (exit {process.returncode}) before its first checkpoint")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint after {timeout_s} s")
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_killed_training_resumes_in_a_new_process(raw_zarr_2d: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    partial = partial_path(model_dir)
    _kill_after_first_checkpoint(_start_training(raw_zarr_2d, model_dir, "first"), partial / CHECKPOINT_FILE)
    assert not model_dir.exists(), "a killed run must not leave anything that looks finished"
    checkpoint = torch.load(partial / CHECKPOINT_FILE, weights_only=True)
    resumed_at = checkpoint["step"]
    assert 0 < resumed_at < SETTINGS["steps"], "the first run finished before it was killed"
    assert checkpoint["best"]["step"] <= resumed_at
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["best"]["weights"].values())
    rows_before_kill = [row for row in _log_rows(partial / LOG_FILE) if int(row[0]) <= resumed_at]
    assert rows_before_kill

    second = _start_training(raw_zarr_2d, model_dir, "second")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.out").read_text()
    assert (model_dir / "weights.pt").exists() and not partial.exists()
    rows = _log_rows(model_dir / LOG_FILE)
    steps = [int(row[0]) for row in rows]
    assert rows[:len(rows_before_kill)] == rows_before_kill, "rows logged before the kill are kept as they were"
    assert any(step > resumed_at for step in steps)
    assert all(a < b for a, b in itertools.pairwise(steps)) and steps[-1] == SETTINGS["steps"]
    assert f"resuming from {partial / CHECKPOINT_FILE} at step {resumed_at}" in (tmp_path / "second.log").read_text()
    history = json.loads((model_dir / "model.json").read_text())["history"]
    assert history["steps_done"] == SETTINGS["steps"]
    assert history["best_val_loss"] == pytest.approx(min(float(row[2]) for row in rows))
