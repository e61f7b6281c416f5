"""The noise check before training, on synthetic volumes whose noise correlation and level are known."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from n2vpipe.ingest import ingest_tiff
from n2vpipe.masking import struct_offsets
from n2vpipe.noise import check_noise, noise_warning, write_noise_report
from n2vpipe.qc import noise_figure
from synthetic import smooth_blobs

THRESHOLD = 0.1
FRACTION = 0.002
CHUNKS = {"z": 16, "y": 64, "x": 64}


def noisy_volume(clean: np.ndarray, axis: int | None, length: int, seed: int, gain: float = 2.0,
                 read_noise: float = 4.0) -> np.ndarray:
    """``gain`` x Poisson(clean / gain) plus Gaussian read noise of std ``read_noise``, which is a moving
    average over ``length`` voxels along ``axis`` (rescaled to the same std) unless ``axis`` is None."""
    rng = np.random.default_rng(seed)
    read = rng.normal(0.0, read_noise, clean.shape)
    if axis is not None:
        read = ndimage.uniform_filter1d(read, length, axis=axis, mode="wrap") * np.sqrt(length)
    return (gain * rng.poisson(clean / gain) + read + 100).astype(np.float32)


def raw_zarr(folder: Path, volume: np.ndarray) -> Path:
    """``volume`` ingested into ``folder/raw.ome.zarr`` the way the pipeline does it."""
    tifffile.imwrite(folder / "raw.tif", volume)
    ingest_tiff(folder / "raw.tif", folder / "raw.ome.zarr", CHUNKS)
    return folder / "raw.ome.zarr"


@pytest.mark.parametrize(("shape", "axis", "name", "mask"), [
    ((32, 128, 128), 2, "x", [[1, 1, 1, 1, 1]]),
    ((32, 128, 128), 1, "y", [[1], [1], [1], [1], [1]]),
    ((32, 128, 128), 0, "z", [[[1]], [[1]], [[1]], [[1]], [[1]]]),
    ((256, 256), 1, "x", [[1, 1, 1, 1, 1]]),
])
def test_noise_correlated_along_one_axis_is_flagged_with_a_line_mask_along_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, shape: tuple[int, ...], axis: int, name: str,
        mask: list) -> None:
    """Read noise averaged over 3 voxels is correlated with its neighbours 1 and 2 voxels away: the
    correlation length is 2 and the mask hides 2 voxels on each side along that axis only."""
    raw = raw_zarr(tmp_path, noisy_volume(smooth_blobs(shape, seed=0), axis, 3, seed=1))
    report = check_noise(raw, 8, FRACTION, THRESHOLD, 0)
    verdict = report["verdict"]
    assert verdict["correlated"] and verdict["axes"] == {name: 2}
    assert verdict["struct_mask"] == mask
    assert verdict["config_lines"] == f"train:\n  struct_mask: {json.dumps(mask)}"
    offsets = struct_offsets(mask, len(shape))
    assert np.all(np.delete(offsets, axis, axis=1) == 0) and sorted(offsets[:, axis]) == [-2, -1, 1, 2]
    with caplog.at_level(logging.INFO):
        write_noise_report(tmp_path / "qc" / "noise.json", report)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"correlated along {name.upper()}" in warnings[0]
    assert verdict["config_lines"] in warnings[0]
    assert noise_warning(tmp_path / "qc" / "noise.json") == verdict["message"]


def test_white_poisson_gaussian_noise_is_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = raw_zarr(tmp_path, noisy_volume(smooth_blobs((32, 128, 128), seed=0), None, 1, seed=1))
    report = check_noise(raw, 8, FRACTION, THRESHOLD, 0)
    assert not report["verdict"]["correlated"] and report["verdict"]["struct_mask"] is None
    assert all(abs(e) < THRESHOLD / 2 for axis in report["channels"][0]["axes"] for e in axis["excess"])
    with caplog.at_level(logging.INFO):
        write_noise_report(tmp_path / "qc" / "noise.json", report)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noise_warning(tmp_path / "qc" / "noise.json") is None
    assert json.loads((tmp_path / "qc" / "noise.json").read_text())["verdict"] == report["verdict"]
    noise_figure(report, tmp_path / "qc" / "noise.png")
    assert (tmp_path / "qc" / "noise.png").stat().st_size > 10_000


def test_noise_correlated_along_every_axis_suggests_no_mask(tmp_path: Path) -> None:
    """Smoothed noise (as after interpolation or filtering) is correlated along every axis: no line mask fits."""
    rng = np.random.default_rng(0)
    raw = raw_zarr(tmp_path, ndimage.gaussian_filter(rng.normal(100, 10, (32, 128, 128)), 1.0).astype(np.float32))
    verdict = check_noise(raw, 8, FRACTION, THRESHOLD, 0)["verdict"]
    assert verdict["correlated"] and set(verdict["axes"]) == {"z", "y", "x"} and verdict["struct_mask"] is None
    assert "every axis" in verdict["message"]


def test_a_configured_struct_mask_that_hides_the_correlation_silences_the_warning(tmp_path: Path) -> None:
    raw = raw_zarr(tmp_path, noisy_volume(smooth_blobs((32, 128, 128), seed=0), 2, 3, seed=1))
    too_short = check_noise(raw, 8, FRACTION, THRESHOLD, 0, configured_mask=[[1, 1, 1]])["verdict"]
    assert not too_short["covered_by_config"] and "use structN2V" in too_short["message"]
    longer = check_noise(raw, 8, FRACTION, THRESHOLD, 0, configured_mask=[[[1, 1, 1, 1, 1, 1, 1]]])
    assert longer["verdict"]["covered_by_config"]
    write_noise_report(tmp_path / "noise.json", longer)
    assert noise_warning(tmp_path / "noise.json") is None


def test_poisson_gaussian_fit_recovers_gain_and_read_noise(tmp_path: Path) -> None:
    """Flat regions at intensities 20..400 with variance 2 x intensity + 16: the fit finds gain 2 and offset 16."""
    levels = np.repeat(np.linspace(20, 400, 8), 16)[:, None, None] * np.ones((128, 64, 64))
    raw = raw_zarr(tmp_path, noisy_volume(levels, None, 1, seed=3) - 100)
    level = check_noise(raw, 32, 1.0, THRESHOLD, 0)["channels"][0]["level"]
    assert level["gain"] == pytest.approx(2.0, rel=0.1)
    assert level["offset"] == pytest.approx(16.0, abs=6.0)


def test_blank_image_is_refused_naming_the_store(tmp_path: Path) -> None:
    raw = raw_zarr(tmp_path, np.zeros((8, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"raw\.ome\.zarr: channel 0 has only 0 flat voxels"):
        check_noise(raw, 4, FRACTION, THRESHOLD, 0)
