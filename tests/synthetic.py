"""Synthetic test volumes with a known clean signal, and TIFF files damaged the ways real ones get damaged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage


def smooth_blobs(shape: tuple[int, ...], seed: int, blobs: int = 40, sigma: float = 2.5) -> np.ndarray:
    """A clean float32 signal: Gaussian-blurred random points, scaled to [10, 110]."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros(shape, dtype=np.float32)
    points = tuple(rng.integers(0, s, size=blobs) for s in shape)
    canvas[points] = 1.0
    blurred = ndimage.gaussian_filter(canvas, sigma)
    return (10 + 100 * blurred / blurred.max()).astype(np.float32)


def poisson_gaussian(clean: np.ndarray, seed: int, read_noise: float = 4.0) -> np.ndarray:
    """Shot noise plus Gaussian read noise, returned as uint16 counts."""
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(clean).astype(np.float32) + rng.normal(0, read_noise, clean.shape)
    return np.clip(np.round(noisy + 100), 0, 65535).astype(np.uint16)


def truncate_file(path: Path, size: int) -> Path:
    """Cut the file at ``path`` to its first ``size`` bytes, as an interrupted copy leaves it."""
    os.truncate(path, size)
    return path


def truncated_imagej_stack(path: Path, planes: int = 10, kept: int = 3, shape: tuple[int, int] = (64, 48)) -> Path:
    """An uncompressed ImageJ ZYX stack of ``planes`` planes cut after ``kept`` of them (and before the IFDs
    tifffile writes after the data): its ImageJ metadata still says ``planes`` images."""
    data = np.arange(planes * shape[0] * shape[1], dtype=np.uint16).reshape(planes, *shape)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX", "spacing": 0.5})
    with tifffile.TiffFile(path) as tif:
        end = tif.pages.first.dataoffsets[0] + kept * tif.pages.first.databytecounts[0]
    return truncate_file(path, end)


def overwrite_tags(path: Path, page: int = 0, **values: object) -> Path:
    """Overwrite TIFF tags of one page in place (e.g. ``ImageWidth=10**8``), as a damaged or forged header has them."""
    with tifffile.TiffFile(path, mode="r+") as tif:
        tags = tif.pages[page].tags
        for name, value in values.items():
            tags[name].overwrite(value)
    return path
