"""Residual diagnostics after inference, on constructed raw/denoised pairs whose answers are known."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from n2vpipe.ingest import ingest_tiff
from n2vpipe.io import blosc_compressor, create_ome_zarr, open_ome_zarr
from n2vpipe.metrics import check_residual, residual_metrics, write_metrics
from n2vpipe.noise import check_noise
from synthetic import smooth_blobs

SHAPE = (16, 64, 64)
THRESHOLD = 0.1


def pairs(residual_of: object, count: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` (raw, denoised) block pairs: denoised = smooth blobs, raw = denoised + ``residual_of(rng, clean)``."""
    rng = np.random.default_rng(0)
    clean = [smooth_blobs(SHAPE, seed=s).astype(np.float64) for s in range(count)]
    return [c + residual_of(rng, c) for c in clean], clean


def white(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    return rng.normal(0, 5, clean.shape)


def test_white_noise_residual_raises_no_flag() -> None:
    raw, denoised = pairs(white)
    metrics = residual_metrics(raw, denoised, "zyx", THRESHOLD, {})
    assert not any(metrics["flags"].values()), metrics["flags"]
    assert metrics["checkerboard_index"] == pytest.approx(1.0, abs=0.15)
    assert all(abs(c) < 0.02 for values in metrics["residual_autocorrelation"].values() for c in values)
    assert abs(metrics["residual_detail_correlation"]) < 0.03
    assert metrics["residual_std"] == pytest.approx(5.0, rel=0.05)
    assert metrics["bias_max_relative"] < 0.1


def test_checkerboard_residual_gives_a_high_index() -> None:
    board = np.indices(SHAPE).sum(axis=0) % 2 * 2.0 - 1  # +-1 alternating along every axis
    metrics = residual_metrics(*pairs(lambda rng, c: white(rng, c) + 5 * board), "zyx", THRESHOLD, {})
    assert metrics["checkerboard_index"] > 10 and metrics["flags"]["checkerboard"]


def test_an_intensity_dependent_offset_is_flagged_as_bias() -> None:
    """Residual mean 0.4 std in the brightest quarter (denoised too dark there), 0 elsewhere."""
    offset = lambda rng, c: white(rng, c) + 2.0 * (c > np.quantile(c, 0.75))  # noqa: E731
    metrics = residual_metrics(*pairs(offset), "zyx", THRESHOLD, {})
    assert metrics["flags"]["bias"] and metrics["bias_max_relative"] > 0.3
    assert metrics["bias"]["residual_mean"][-1] == pytest.approx(2.0, abs=0.5)
    assert abs(metrics["bias"]["residual_mean"][0]) < 0.5


def test_structure_taken_out_with_the_noise_is_flagged() -> None:
    """A denoiser that blurs: raw = clean + noise, denoised = clean blurred, so the residual holds the edges."""
    raw, clean = pairs(white)
    blurred = [ndimage.gaussian_filter(c, 2.0) for c in clean]
    metrics = residual_metrics(raw, blurred, "zyx", THRESHOLD, {})
    assert metrics["residual_detail_correlation"] > 0.1 and metrics["flags"]["residual_structure"]


def test_x_correlated_noise_in_the_residual_means_the_stripes_left_the_image() -> None:
    stripes = lambda rng, c: ndimage.uniform_filter1d(white(rng, c), 3, axis=2) * np.sqrt(3)  # noqa: E731
    metrics = residual_metrics(*pairs(stripes), "zyx", THRESHOLD, {"x": 0.36})
    assert metrics["residual_autocorrelation"]["x"][0] == pytest.approx(2 / 3, abs=0.05)
    assert metrics["flags"]["correlated_residual"] == ["x"]
    assert metrics["stripes_gone"] == {"x": True} and metrics["flags"]["stripes_left"] == []
    kept = residual_metrics(*pairs(white), "zyx", THRESHOLD, {"x": 0.36})
    assert kept["stripes_gone"] == {"x": False} and kept["flags"]["stripes_left"] == ["x"]


def test_metrics_json_from_real_stores(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Raw = blobs + white noise ingested; denoised = the clean blobs, stored as a uint16 OME-Zarr with
    the pipeline's rescaling attribute (value = 0 + 0.5 x stored)."""
    clean = smooth_blobs((32, 128, 128), seed=0)
    noisy = (clean + np.random.default_rng(1).normal(0, 5, clean.shape)).astype(np.float32)
    tifffile.imwrite(tmp_path / "raw.tif", noisy)
    ingest_tiff(tmp_path / "raw.tif", tmp_path / "raw.ome.zarr", {"z": 16, "y": 64, "x": 64})
    _, meta = open_ome_zarr(tmp_path / "raw.ome.zarr")
    stored = create_ome_zarr(tmp_path / "denoised.ome.zarr", dataclasses.replace(meta, dtype="uint16"), (16, 64, 64),
                             blosc_compressor("zstd", 1), "denoised", {"intensity": {"offset": [0.0], "scale": [0.5]}})
    stored[:] = np.round(clean / 0.5).astype(np.uint16)
    (tmp_path / "qc").mkdir()
    noise = check_noise(tmp_path / "raw.ome.zarr", 8, 0.002, THRESHOLD, 0)
    (tmp_path / "qc" / "noise.json").write_text(json.dumps(noise))
    metrics = check_residual(tmp_path / "raw.ome.zarr", tmp_path / "denoised.ome.zarr", tmp_path / "qc" / "noise.json",
                             8, 0.002, THRESHOLD, 0)
    assert metrics["flagged"] == [] and metrics["blocks_per_channel"] == 4
    assert metrics["channels"][0]["residual_std"] == pytest.approx(5.0, rel=0.1)
    with caplog.at_level(logging.INFO):
        write_metrics(tmp_path / "qc" / "metrics.json", metrics)
    assert json.loads((tmp_path / "qc" / "metrics.json").read_text())["flagged"] == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
