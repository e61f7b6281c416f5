"""A full disk during a training checkpoint, while saving the model, or while inference writes its chunks:
the job log's first error line says "no space left on device" and names the path; no temporary file stays
behind and nothing looks finished. The disk is a real, small tmpfs (the tests run as root)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import tifffile

from mounts import tmpfs
from n2vpipe.errors import DiskFullError
from n2vpipe.ingest import ingest_tiff
from n2vpipe.io import export_tiff, open_ome_zarr, partial_path
from n2vpipe.jobs import job_logging
from n2vpipe.model_io import WEIGHTS_FILE
from n2vpipe.predict import DONE_DIR, PredictConfig, predict_part, predict_volume
from n2vpipe.train import CHECKPOINT_FILE, LOG_FILE, TrainConfig, train_n2v
from synthetic import poisson_gaussian, smooth_blobs
from tiny import noisy_raw_zarr, tiny_model

BLOCK = {"z": 8, "y": 16, "x": 16}
CONFIG = PredictConfig(block=BLOCK, pyramid_levels=1)
# 2D, 4 filters: the weights take 37 kB, a checkpoint about four times that; a log row a few dozen bytes.
TRAIN_2D = dict(patch={"y": 32, "x": 32}, batch_size=2, base_filters=4, validate_every=2, validation_patches=2,
                pool_tiles=2, device="cpu")
FREE_FOR_TRAINING = 16 * 1024


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    with tmpfs(mount_point, "size=1024k"):
        yield mount_point


def fill(disk: Path, leave: int) -> Path:
    """Take all of ``disk``'s free space but ``leave`` bytes with a filler file; return it."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - leave))
    return filler


def first_error_line(log_file: Path) -> str:
    """The job log's first ERROR record."""
    return next(line for line in log_file.read_text().splitlines() if " ERROR " in line)


def temporary_files(folder: Path) -> list[Path]:
    """Files that an interrupted atomic write (ours: ``*.tmp``; zarr's: ``<chunk>.<uuid>.partial``) leaves."""
    return [p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".tmp" or p.suffix == ".partial")]


@pytest.fixture(scope="module")
def raw_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return noisy_raw_zarr(tmp_path_factory.mktemp("raw2d"), (96, 96), {"y": 32, "x": 32})


def test_full_disk_at_a_checkpoint_names_it_and_keeps_the_partial_model(raw_2d: Path, small_disk: Path,
                                                                        tmp_path: Path) -> None:
    model_dir = small_disk / "model"
    fill(small_disk, FREE_FOR_TRAINING)
    with pytest.raises(DiskFullError), job_logging(tmp_path / "train.log"):
        train_n2v(raw_2d, model_dir, TrainConfig(steps=8, checkpoint_every=4, **TRAIN_2D))
    checkpoint = partial_path(model_dir) / CHECKPOINT_FILE
    line = first_error_line(tmp_path / "train.log")
    assert f"{checkpoint}: no space left on device" in line
    assert not temporary_files(small_disk) and not checkpoint.exists()
    assert not model_dir.exists() and (partial_path(model_dir) / LOG_FILE).exists()


def test_full_disk_while_saving_the_model_names_the_weights_file(raw_2d: Path, small_disk: Path,
                                                                 tmp_path: Path) -> None:
    model_dir = small_disk / "model"
    fill(small_disk, FREE_FOR_TRAINING)
    with pytest.raises(DiskFullError), job_logging(tmp_path / "train.log"):
        train_n2v(raw_2d, model_dir, TrainConfig(steps=4, checkpoint_every=100, **TRAIN_2D))
    line = first_error_line(tmp_path / "train.log")
    assert f"{partial_path(model_dir) / WEIGHTS_FILE}: no space left on device" in line
    assert not temporary_files(small_disk)
    assert not model_dir.exists() and not (partial_path(model_dir) / WEIGHTS_FILE).exists()


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 16x64x64 raw OME-Zarr (32 blocks of BLOCK) and a model trained on it for a few steps."""
    folder = tmp_path_factory.mktemp("raw3d")
    raw = noisy_raw_zarr(folder, (16, 64, 64), BLOCK)
    return raw, tiny_model(raw, folder / "model", BLOCK)


def test_full_disk_during_prediction_names_the_output_and_the_rerun_finishes(
        trained_3d: tuple[Path, Path], small_disk: Path, tmp_path: Path) -> None:
    """The float32 chunks (about 8 kB each) outgrow 48 kB after the metadata and a few blocks."""
    raw, model = trained_3d
    dst = small_disk / "denoised.ome.zarr"
    filler = fill(small_disk, 48 * 1024)
    with pytest.raises(DiskFullError), job_logging(tmp_path / "predict.log"):
        predict_volume(raw, model, dst, CONFIG, threads=2)
    partial = partial_path(dst)
    assert f"{partial}: no space left on device" in first_error_line(tmp_path / "predict.log")
    assert not temporary_files(small_disk)
    assert not dst.exists(), "a prediction stopped by a full disk must not look finished"
    finished = len(os.listdir(partial / DONE_DIR))
    assert 0 < finished < 32

    filler.unlink()
    assert predict_volume(raw, model, dst, CONFIG, threads=2).blocks == 32 - finished
    assert dst.exists() and not partial.exists()


def test_no_room_for_a_done_marker_names_it_and_the_block_is_redone(trained_3d: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """Part 1 of 4 writes its chunks, but its done markers go to a tmpfs without a free inode (mounted over
    the markers' folder of the partial output part 0 started): the first marker fails, named."""
    raw, model = trained_3d
    dst = tmp_path / "denoised.ome.zarr"
    predict_part(raw, model, dst, CONFIG, part=0, parts=4)
    done_dir = partial_path(dst) / DONE_DIR
    with tmpfs(done_dir, "size=64k,nr_inodes=1"):
        with pytest.raises(DiskFullError), job_logging(tmp_path / "predict.log"):
            predict_part(raw, model, dst, CONFIG, part=1, parts=4, threads=1)
        assert not os.listdir(done_dir)
    line = first_error_line(tmp_path / "predict.log")
    assert f"{done_dir}/t0_c0_" in line and ": no space left on device" in line
    assert not temporary_files(tmp_path) and len(os.listdir(done_dir)) == 8 and not dst.exists()
    assert predict_part(raw, model, dst, CONFIG, part=1, parts=4).blocks == 8, "unmarked blocks are done again"


def test_full_disk_during_ingest_names_the_output_and_leaves_nothing(small_disk: Path, tmp_path: Path) -> None:
    """A 16x64x64 float32 stack (256 kB, noise: it barely compresses) does not fit in 64 kB."""
    source = tmp_path / "vol.tif"
    tifffile.imwrite(source, poisson_gaussian(smooth_blobs((16, 64, 64), seed=0), seed=1).astype("float32"))
    dst = small_disk / "raw.ome.zarr"
    fill(small_disk, 64 * 1024)
    with pytest.raises(DiskFullError), job_logging(tmp_path / "ingest.log"):
        ingest_tiff(source, dst, BLOCK)
    assert f"{dst}: no space left on device" in first_error_line(tmp_path / "ingest.log")
    assert not dst.exists() and not partial_path(dst).exists()
    assert not temporary_files(small_disk)


def test_full_disk_during_tiff_export_names_the_file_and_leaves_nothing(trained_3d: tuple[Path, Path],
                                                                         small_disk: Path, tmp_path: Path) -> None:
    raw, _ = trained_3d
    array, meta = open_ome_zarr(raw)
    dst = small_disk / "denoised.tif"
    fill(small_disk, 32 * 1024)
    with pytest.raises(DiskFullError), job_logging(tmp_path / "export.log"):
        export_tiff(array, meta, dst)
    assert f"{dst}: no space left on device" in first_error_line(tmp_path / "export.log")
    assert not dst.exists() and not partial_path(dst).exists()
