"""Training killed in a real process (SIGKILL, or SIGTERM as SLURM sends at a time limit) resumes from its
checkpoint in the next process and ends with the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from n2vpipe.io import partial_path
from n2vpipe.train import CHECKPOINT_FILE, LOG_FILE
from tiny import noisy_raw_zarr

TRAIN_SCRIPT = """
import json, sys
from n2vpipe.jobs import job_logging
from n2vpipe.train import TrainConfig, train_n2v
zarr_path, model_dir, log_file, settings = sys.argv[1:]
with job_logging(log_file):
    train_n2v(zarr_path, model_dir, TrainConfig.from_mapping(json.loads(settings)))
"""
# Two pool tiles refreshed every other batch: a resumed run that re-read other tiles, or drew other
# random numbers, would take other steps. float32 and one torch thread: CPU results are bit-exact.
SETTINGS = {"patch": {"y": 32, "x": 32}, "batch_size": 4, "base_filters": 4, "steps": 120, "validate_every": 5,
            "checkpoint_every": 10, "validation_patches": 2, "pool_tiles": 2, "tile_refresh_every": 2,
            "device": "cpu", "precision": "float32", "max_minutes": 0}


@pytest.fixture(scope="module")
def raw_zarr_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return noisy_raw_zarr(tmp_path_factory.mktemp("raw"), (128, 128), {"y": 32, "x": 32})


@pytest.fixture(scope="module")
def uninterrupted_weights(raw_zarr_2d: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The weights of a run nothing interrupted, trained in its own process like the others."""
    model_dir = tmp_path_factory.mktemp("uninterrupted") / "model"
    process = _start_training(raw_zarr_2d, model_dir, "uninterrupted")
    assert process.wait(timeout=300) == 0, (model_dir.parent / "uninterrupted.out").read_text()
    return torch.load(model_dir / "weights.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted_averaged_weights(raw_zarr_2d: Path,
                                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The weights of an uninterrupted run that saves the moving average of its weights."""
    model_dir = tmp_path_factory.mktemp("uninterrupted_ema") / "model"
    process = _start_training(raw_zarr_2d, model_dir, "uninterrupted", ema_decay=0.99)
    assert process.wait(timeout=300) == 0, (model_dir.parent / "uninterrupted.out").read_text()
    return torch.load(model_dir / "weights.pt", weights_only=True)


def _start_training(raw_zarr: Path, model_dir: Path, name: str, **overrides: object) -> subprocess.Popen[bytes]:
    """Run training in a new Python process; its job log is ``<name>.log`` beside the model."""
    folder = model_dir.parent
    with open(folder / f"{name}.out", "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, str(raw_zarr), str(model_dir), str(folder / f"{name}.log"),
             json.dumps({**SETTINGS, **overrides})],
            stdout=output, stderr=subprocess.STDOUT,
        )


def _log_rows(log_csv: Path) -> list[list[str]]:
    """Rows of the training log, header left out."""
    return [line.split(",") for line in log_csv.read_text().split()[1:]]


def _checkpoint_step(checkpoint: Path) -> int:
    """The step ``checkpoint`` was written at; 0 while there is none (it is replaced atomically)."""
    return torch.load(checkpoint, weights_only=True)["step"] if checkpoint.exists() else 0


def _logged_step(log_csv: Path) -> int:
    """The last step in the training log; 0 while there is none."""
    rows = _log_rows(log_csv) if log_csv.exists() else []
    return int(rows[-1][0]) if rows and len(rows[-1]) == 5 else 0


def _signal_when(process: subprocess.Popen[bytes], reached: Callable[[], bool], signum: int,
                 timeout_s: float = 120) -> None:
    """Send ``signum`` to ``process`` as soon as ``reached()``; fail if it ends or stalls before that."""
    deadline = time.monotonic() + timeout_s
    while not reached():
        if process.poll() is not None:
            pytest.fail(f"training ended (exit {process.returncode}) before the point it was to be stopped at")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the point to stop training at was not reached after {timeout_s} s")
        time.sleep(0.005)
    process.send_signal(signum)


def _assert_equal_weights(model_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    saved = torch.load(model_dir / "weights.pt", weights_only=True)
    assert saved.keys() == expected.keys()
    different = [name for name in saved if not torch.equal(saved[name], expected[name])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different}"


@pytest.mark.parametrize("kill_from_step", [10, 60], ids=["first-checkpoint", "later-checkpoint"])
def test_killed_training_resumes_to_the_uninterrupted_weights(
        raw_zarr_2d: Path, uninterrupted_weights: dict[str, torch.Tensor], tmp_path: Path,
        kill_from_step: int) -> None:
    model_dir = tmp_path / "model"
    partial = partial_path(model_dir)
    first = _start_training(raw_zarr_2d, model_dir, "first")
    _signal_when(first, lambda: _checkpoint_step(partial / CHECKPOINT_FILE) >= kill_from_step, signal.SIGKILL)
    first.wait()
    assert not model_dir.exists(), "a killed run must not leave anything that looks finished"
    checkpoint = torch.load(partial / CHECKPOINT_FILE, weights_only=True)
    resumed_at = checkpoint["step"]
    assert kill_from_step <= resumed_at < min(kill_from_step + 50, SETTINGS["steps"])
    assert checkpoint["best"]["step"] <= resumed_at
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["best"]["weights"].values())
    assert len(checkpoint["pool"]["sources"]) == SETTINGS["pool_tiles"]
    rows_before_kill = [row for row in _log_rows(partial / LOG_FILE) if int(row[0]) <= resumed_at]
    assert rows_before_kill

    second = _start_training(raw_zarr_2d, model_dir, "second")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.out").read_text()
    assert (model_dir / "weights.pt").exists() and not partial.exists()
    assert f"resuming from {partial / CHECKPOINT_FILE} at step {resumed_at}" in (tmp_path / "second.log").read_text()
    _assert_equal_weights(model_dir, uninterrupted_weights)
    rows = _log_rows(model_dir / LOG_FILE)
    steps = [int(row[0]) for row in rows]
    assert rows[:len(rows_before_kill)] == rows_before_kill, "rows logged before the kill are kept as they were"
    assert all(a < b for a, b in itertools.pairwise(steps)) and steps[-1] == SETTINGS["steps"]
    history = json.loads((model_dir / "model.json").read_text())["history"]
    assert history["steps_done"] == SETTINGS["steps"]
    assert history["best_val_loss"] == pytest.approx(min(float(row[2]) for row in rows))


def test_sigterm_checkpoints_at_once_exits_non_zero_and_the_rerun_resumes(
        raw_zarr_2d: Path, uninterrupted_weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """No periodic checkpoint falls within the run: the one there is, SIGTERM wrote. The rerun checkpoints
    at other steps (a run-only setting), which must not make it throw that checkpoint away."""
    model_dir = tmp_path / "model"
    partial = partial_path(model_dir)
    first = _start_training(raw_zarr_2d, model_dir, "first", checkpoint_every=1000)
    _signal_when(first, lambda: _logged_step(partial / LOG_FILE) >= 20, signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM, (tmp_path / "first.out").read_text()
    assert not model_dir.exists(), "a stopped run must not leave anything that looks finished"
    stopped_at = torch.load(partial / CHECKPOINT_FILE, weights_only=True)["step"]
    assert 20 <= stopped_at < SETTINGS["steps"]
    error_lines = [line for line in (tmp_path / "first.log").read_text().splitlines() if " ERROR " in line]
    assert len(error_lines) == 1, error_lines
    assert (f"training stopped by SIGTERM at step {stopped_at} of {SETTINGS['steps']}; the checkpoint "
            f"{partial / CHECKPOINT_FILE} is kept and rerunning the job resumes from it") in error_lines[0]

    second = _start_training(raw_zarr_2d, model_dir, "second")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.out").read_text()
    assert f"resuming from {partial / CHECKPOINT_FILE} at step {stopped_at}" in (tmp_path / "second.log").read_text()
    _assert_equal_weights(model_dir, uninterrupted_weights)


def test_killed_training_with_weight_averaging_resumes_to_the_uninterrupted_average(
        raw_zarr_2d: Path, uninterrupted_averaged_weights: dict[str, torch.Tensor],
        uninterrupted_weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    partial = partial_path(model_dir)
    first = _start_training(raw_zarr_2d, model_dir, "first", ema_decay=0.99)
    _signal_when(first, lambda: _checkpoint_step(partial / CHECKPOINT_FILE) >= 60, signal.SIGKILL)
    first.wait()
    checkpoint = torch.load(partial / CHECKPOINT_FILE, weights_only=True)
    assert not all(torch.equal(checkpoint["average"][k], checkpoint["model"][k]) for k in checkpoint["model"])
    second = _start_training(raw_zarr_2d, model_dir, "second", ema_decay=0.99)
    assert second.wait(timeout=300) == 0, (tmp_path / "second.out").read_text()
    assert f"at step {checkpoint['step']}" in (tmp_path / "second.log").read_text()
    _assert_equal_weights(model_dir, uninterrupted_averaged_weights)
    assert not all(torch.equal(uninterrupted_averaged_weights[k], uninterrupted_weights[k])
                   for k in uninterrupted_weights), "the average is not the raw weights"


@pytest.fixture(scope="module")
def start_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of the same network, trained for a few steps on another volume: what warm starts start from."""
    folder = tmp_path_factory.mktemp("start")
    raw = noisy_raw_zarr(folder, (128, 128), {"y": 32, "x": 32}, seed=7)
    process = _start_training(raw, folder / "model", "start", steps=10)
    assert process.wait(timeout=300) == 0, (folder / "start.out").read_text()
    return folder / "model"


def test_killed_warm_started_training_resumes_from_its_own_checkpoint(
        raw_zarr_2d: Path, start_model: Path, uninterrupted_weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """A warm-started run killed after its checkpoint resumes from that checkpoint (not from the start model's
    weights again) and ends with the weights of an uninterrupted warm-started run."""
    uninterrupted = tmp_path / "uninterrupted" / "model"
    uninterrupted.parent.mkdir()
    process = _start_training(raw_zarr_2d, uninterrupted, "uninterrupted", init_from=str(start_model))
    assert process.wait(timeout=300) == 0, (uninterrupted.parent / "uninterrupted.out").read_text()
    warm_weights = torch.load(uninterrupted / "weights.pt", weights_only=True)
    assert not all(torch.equal(warm_weights[k], uninterrupted_weights[k]) for k in warm_weights)

    model_dir = tmp_path / "model"
    partial = partial_path(model_dir)
    first = _start_training(raw_zarr_2d, model_dir, "first", init_from=str(start_model))
    _signal_when(first, lambda: _checkpoint_step(partial / CHECKPOINT_FILE) >= 30, signal.SIGKILL)
    first.wait()
    checkpoint = torch.load(partial / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["warm_start"]["source"] == str(start_model)
    second = _start_training(raw_zarr_2d, model_dir, "second", init_from=str(start_model))
    assert second.wait(timeout=300) == 0, (tmp_path / "second.out").read_text()
    assert f"resuming from {partial / CHECKPOINT_FILE} at step {checkpoint['step']}" in \
        (tmp_path / "second.log").read_text()
    _assert_equal_weights(model_dir, warm_weights)
    assert json.loads((model_dir / "model.json").read_text())["training"]["warm_start"] == checkpoint["warm_start"]


def test_a_checkpoint_from_other_start_weights_is_not_resumed(
        raw_zarr_2d: Path, start_model: Path, uninterrupted_weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """The model a killed run started from was retrained before the rerun (same path, other weights): the
    checkpoint belongs to the old weights, so the rerun discards it, says why, and starts from the new ones."""
    source = tmp_path / "source"
    shutil.copytree(start_model, source)
    model_dir = tmp_path / "model"
    partial = partial_path(model_dir)
    first = _start_training(raw_zarr_2d, model_dir, "first", init_from=str(source))
    _signal_when(first, lambda: _checkpoint_step(partial / CHECKPOINT_FILE) >= 10, signal.SIGKILL)
    first.wait()
    torch.save(uninterrupted_weights, source / "weights.pt")
    second = _start_training(raw_zarr_2d, model_dir, "second", init_from=str(source))
    assert second.wait(timeout=300) == 0, (tmp_path / "second.out").read_text()
    log = (tmp_path / "second.log").read_text()
    assert "it was written with other training settings (the weights started from:" in log
    assert "resuming from" not in log
