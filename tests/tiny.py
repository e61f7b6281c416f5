"""Small real pipeline artefacts for tests: a noisy raw OME-Zarr, and a model trained on it for a few steps."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tifffile

from n2vpipe.ingest import ingest_tiff
from n2vpipe.metrics import check_residual, write_metrics
from n2vpipe.noise import check_noise, write_noise_report
from n2vpipe.qc import comparison_figure
from n2vpipe.train import TrainConfig, train_n2v
from synthetic import poisson_gaussian, smooth_blobs


def noisy_raw_zarr(folder: Path, shape: tuple[int, ...], chunks: Mapping[str, int], seed: int = 0) -> Path:
    """``folder/raw.ome.zarr``, ingested from ``folder/noisy.tif``: Poisson-Gaussian noise (seed ``seed + 1``)
    over smooth blobs (seed ``seed``) of ``shape``."""
    tifffile.imwrite(folder / "noisy.tif", poisson_gaussian(smooth_blobs(shape, seed=seed), seed=seed + 1))
    ingest_tiff(folder / "noisy.tif", folder / "raw.ome.zarr", chunks)
    return folder / "raw.ome.zarr"


def tiny_model(raw: Path, model_dir: Path, patch: Mapping[str, int], steps: int = 2) -> Path:
    """A depth-1, 4-filter model trained on ``raw`` for ``steps`` steps, without validation."""
    train_n2v(raw, model_dir, TrainConfig(patch=dict(patch), batch_size=2, steps=steps, base_filters=4, depth=1,
                                          validation_fraction=0))
    return model_dir


def qc_figure(raw_zarr: Path, denoised_zarr: Path, png: Path) -> Path:
    """The pipeline's QC figure of ``denoised_zarr``, with its noise check and residual metrics (written
    beside ``png``, from a small sample of blocks), made by the code rules noise_check, qc_metrics and qc_figure run."""
    noise, metrics = png.with_name("noise.json"), png.with_name("metrics.json")
    write_noise_report(noise, check_noise(raw_zarr, 4, 0.002, 0.1, 0))
    write_metrics(metrics, check_residual(raw_zarr, denoised_zarr, noise, 4, 0.002, 0.1, 0))
    comparison_figure(raw_zarr, denoised_zarr, noise, metrics, png)
    return png
