"""Small real pipeline artefacts for tests: a noisy raw OME-Zarr, and a model trained on it for a few steps."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tifffile

from n2vpipe.ingest import ingest_tiff
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
