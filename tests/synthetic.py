"""Synthetic test volumes with a known clean signal."""

from __future__ import annotations

import numpy as np
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
