"""Training: a real (tiny) run on a zarr, the saved model, resume from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from n2vpipe.ingest import ingest_tiff
from n2vpipe.io import partial_path
from n2vpipe.model_io import load_model
from n2vpipe.train import CHECKPOINT_FILE, TrainConfig, augment, split_regions, train_n2v
from synthetic import poisson_gaussian, smooth_blobs

TINY = dict(patch={"z": 8, "y": 32, "x": 32}, batch_size=2, base_filters=4, validate_every=2,
            checkpoint_every=3, validation_patches=2, pool_tiles=2)


@pytest.fixture()
def raw_zarr(tmp_path: Path) -> Path:
    noisy = poisson_gaussian(smooth_blobs((16, 48, 48), seed=0), seed=1)
    tifffile.imwrite(tmp_path / "vol.tif", noisy, imagej=True, metadata={"axes": "ZYX", "spacing": 0.2},
                     resolution=(10.0, 10.0))
    ingest_tiff(tmp_path / "vol.tif", tmp_path / "raw.ome.zarr", {"z": 8, "y": 16, "x": 16})
    return tmp_path / "raw.ome.zarr"


def test_training_writes_a_self_describing_model(raw_zarr: Path, tmp_path: Path) -> None:
    train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=4, **TINY))
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"weights.pt", "model.json", "training_log.csv", "loss.png"} <= files
    assert CHECKPOINT_FILE not in files
    description = json.loads((tmp_path / "model" / "model.json").read_text())
    assert description["architecture"]["ndim"] == 3
    assert description["spatial_axes"] == "zyx"
    assert description["training"]["seed"] == 0 and description["training"]["steps"] == 4
    assert 100 < description["normalisation"]["mean"][0] < 200
    assert description["receptive_field"][1] == 47
    model, loaded = load_model(tmp_path / "model")
    assert not model.training and loaded.normalisation.std[0] > 0


def test_weights_file_holds_tensors_only(raw_zarr: Path, tmp_path: Path) -> None:
    train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=2, **TINY))
    state = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_same_seed_gives_identical_weights_on_cpu(raw_zarr: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        train_n2v(raw_zarr, tmp_path / name, TrainConfig(steps=3, **TINY), threads=1)
    first = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    second = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_interrupted_training_resumes_from_its_checkpoint(raw_zarr: Path, tmp_path: Path) -> None:
    """A run stopped after step 3 leaves a checkpoint; the next run continues from step 3."""
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "model")
    partial = partial_path(tmp_path / "model")
    assert (partial / CHECKPOINT_FILE).exists() and not (tmp_path / "model").exists()
    train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=6, **TINY))
    steps = [int(line.split(",")[0]) for line in (tmp_path / "model" / "training_log.csv").read_text().split()[1:]]
    assert steps == [2, 4, 6], "log continues after the checkpoint at step 3 instead of restarting"
    assert json.loads((tmp_path / "model" / "model.json").read_text())["history"]["steps_done"] == 6


def test_checkpoint_from_other_settings_is_not_resumed(raw_zarr: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "model")
    train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=4, learning_rate=1e-3, **TINY))
    steps = [int(line.split(",")[0]) for line in (tmp_path / "model" / "training_log.csv").read_text().split()[1:]]
    assert steps == [2, 4], "an edited config must train from scratch"


def _train_and_interrupt_after_checkpoint(raw_zarr: Path, model_dir: Path) -> None:
    """Run training and raise KeyboardInterrupt right after the first checkpoint is written."""
    import n2vpipe.train as train_module

    original = train_module._save_checkpoint

    def save_then_interrupt(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)
        raise KeyboardInterrupt

    train_module._save_checkpoint = save_then_interrupt
    try:
        train_n2v(raw_zarr, model_dir, TrainConfig(steps=6, **TINY))
    finally:
        train_module._save_checkpoint = original


def test_validation_region_is_disjoint_from_training() -> None:
    train, val = split_regions((32, 200, 64), (16, 64, 64), 0.1)
    assert val is not None
    assert train.stop[1] == val.start[1] == 136 and val.stop[1] == 200
    assert split_regions((16, 64, 64), (16, 64, 64), 0.1)[1] is None


def test_augmentation_never_mixes_z() -> None:
    """Each Z plane of an augmented patch comes from the same Z plane of the original."""
    batch = np.arange(2 * 4 * 8 * 8, dtype=np.float32).reshape(2, 4, 8, 8)
    out = augment(batch, np.random.default_rng(0))
    for original, augmented in zip(batch, out):
        for z in range(4):
            assert set(augmented[z].ravel()) == set(original[z].ravel())


def test_unknown_training_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown training settings: stpes"):
        TrainConfig.from_mapping({"stpes": 10})
