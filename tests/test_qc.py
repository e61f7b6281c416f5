"""The per-acquisition QC figure: views with the voxel aspect kept, from real stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from n2vpipe.ingest import ingest_tiff
from n2vpipe.io import ImageMeta, blosc_compressor, create_ome_zarr, open_ome_zarr
from n2vpipe.metrics import check_residual, write_metrics
from n2vpipe.noise import check_noise, write_noise_report
from n2vpipe.qc import centre_crop, comparison_figure, view_aspect, views_of
from synthetic import poisson_gaussian, smooth_blobs


def test_view_aspect_follows_the_voxel_size() -> None:
    meta = ImageMeta("zyx", (8, 16, 32), "uint16", (0.5, 0.1, 0.2))
    assert views_of(meta) == ["XY", "XZ", "YZ"]
    assert [view_aspect(meta, v) for v in views_of(meta)] == [pytest.approx(0.5), pytest.approx(2.5), pytest.approx(5)]
    assert views_of(ImageMeta("cyx", (2, 16, 32), "uint16", (1.0, 0.1, 0.1))) == ["XY"]


def test_centre_crop_takes_the_middle() -> None:
    plane = np.arange(100 * 80).reshape(100, 80)
    crop = centre_crop(plane, 10)
    assert crop.shape == (10, 10) and crop[0, 0] == plane[45, 35]
    assert centre_crop(plane[:6], 10).shape == (6, 10)


@pytest.mark.parametrize("shape", [(24, 64, 64), (96, 96)])
def test_figure_from_real_stores(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """Raw = Poisson-Gaussian blobs ingested; denoised = the raw blurred; noise and metrics from the library."""
    tifffile.imwrite(tmp_path / "raw.tif", poisson_gaussian(smooth_blobs(shape, seed=0), seed=1))
    ingest_tiff(tmp_path / "raw.tif", tmp_path / "raw.ome.zarr", {"z": 16, "y": 64, "x": 64})
    raw, meta = open_ome_zarr(tmp_path / "raw.ome.zarr")
    denoised = create_ome_zarr(tmp_path / "denoised.ome.zarr", dataclasses.replace(meta, dtype="float32"),
                               raw.chunks, blosc_compressor("zstd", 1), "denoised")
    denoised[:] = ndimage.gaussian_filter(raw[:].astype(np.float32), 1.0)
    noise, metrics = tmp_path / "noise.json", tmp_path / "metrics.json"
    write_noise_report(noise, check_noise(tmp_path / "raw.ome.zarr", 4, 0.002, 0.1, 0))
    write_metrics(metrics, check_residual(tmp_path / "raw.ome.zarr", tmp_path / "denoised.ome.zarr", noise,
                                          4, 0.002, 0.1, 0))
    comparison_figure(tmp_path / "raw.ome.zarr", tmp_path / "denoised.ome.zarr", noise, metrics, tmp_path / "qc.png")
    height, width, _ = matplotlib.image.imread(tmp_path / "qc.png").shape
    panels = 4 if len(shape) == 3 else 2
    assert (height, width) == (1200, round(450 * panels))
