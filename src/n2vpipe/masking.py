"""Blind-spot masking for Noise2Void and N2V2, as pure functions with an explicit RNG.

The mask is always an explicit boolean array: the loss is taken exactly on the
chosen pixels, including those whose replacement happens to equal the original
value (common in low-count integer data).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np

Replacement = Literal["uniform", "median"]


def stratified_box_side(ndim: int, fraction: float) -> int:
    """Side of the cubic stratification box: the largest integer with ``side**ndim <= 1/fraction``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"masked fraction must be in (0, 1], got {fraction}")
    side = max(1, math.floor(fraction ** (-1.0 / ndim)))
    while (side + 1) ** ndim * fraction <= 1.0 + 1e-12:
        side += 1
    while side > 1 and side**ndim * fraction > 1.0 + 1e-12:
        side -= 1
    return side


def blind_spot_mask(shape: tuple[int, ...], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask over ``shape`` with ``fraction`` of the pixels chosen, stratified.

    The grid of ``side**ndim`` boxes starts at a random offset; each box holds one
    uniformly placed candidate, kept with probability ``fraction * side**ndim``,
    so the expected masked fraction equals ``fraction`` exactly in any dimension
    (juglab/n2v's 3D square-root box masks ~20x too few voxels).
    """
    ndim = len(shape)
    side = stratified_box_side(ndim, fraction)
    keep_probability = fraction * side**ndim
    offsets = rng.integers(-side + 1, 1, size=ndim)
    starts = [np.arange(o, n, side) for o, n in zip(offsets, shape)]
    origins = np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, ndim)
    points = origins + rng.integers(0, side, size=origins.shape)
    inside = np.all((points >= 0) & (points < np.asarray(shape)), axis=1)
    kept = inside & (rng.random(len(points)) < keep_probability)
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(points[kept].T)] = True
    return mask


def neighbour_offsets(ndim: int, radius: int) -> np.ndarray:
    """All integer offsets within a cube of ``radius`` around the centre, excluding the centre."""
    if radius < 1:
        raise ValueError(f"neighbourhood radius must be >= 1, got {radius}")
    grid = itertools.product(range(-radius, radius + 1), repeat=ndim)
    return np.array([o for o in grid if any(o)], dtype=np.int64)


def _uniform_neighbours(points: np.ndarray, shape: tuple[int, ...], radius: int,
                        rng: np.random.Generator) -> np.ndarray:
    """One random in-bounds neighbour per point, never the point itself."""
    offsets = neighbour_offsets(points.shape[1], radius)
    upper = np.asarray(shape) - 1
    neighbours = points.copy()
    pending = np.arange(len(points))
    for _ in range(64):
        if pending.size == 0:
            return neighbours
        candidate = points[pending] + offsets[rng.integers(0, len(offsets), size=pending.size)]
        candidate = np.clip(candidate, 0, upper)
        neighbours[pending] = candidate
        pending = pending[np.all(candidate == points[pending], axis=1)]
    raise ValueError(f"patch {shape} is too small to pick a neighbour within radius {radius}")


def _median_neighbours(patch: np.ndarray, points: np.ndarray, radius: int) -> np.ndarray:
    """Median of the in-bounds neighbourhood of each point, centre excluded (N2V2)."""
    offsets = neighbour_offsets(points.shape[1], radius)
    coords = points[:, None, :] + offsets[None, :, :]
    inside = np.all((coords >= 0) & (coords < np.asarray(patch.shape)), axis=2)
    clipped = np.clip(coords, 0, np.asarray(patch.shape) - 1)
    values = patch[tuple(np.moveaxis(clipped, -1, 0))].astype(np.float64)
    values[~inside] = np.nan
    return np.nanmedian(values, axis=1)


def apply_blind_spots(
    patch: np.ndarray,
    mask: np.ndarray,
    radius: int,
    replacement: Replacement,
    rng: np.random.Generator,
) -> np.ndarray:
    """Return a copy of ``patch`` with every masked pixel replaced from its neighbourhood.

    ``uniform`` (N2V) copies a uniformly chosen neighbour within ``radius``;
    ``median`` (N2V2) takes the median of the neighbourhood. The centre value is
    never used for its own replacement.
    """
    points = np.argwhere(mask)
    out = patch.astype(np.float32, copy=True)
    if len(points) == 0:
        return out
    if replacement == "uniform":
        source = _uniform_neighbours(points, patch.shape, radius, rng)
        out[tuple(points.T)] = patch[tuple(source.T)]
    elif replacement == "median":
        out[tuple(points.T)] = _median_neighbours(patch, points, radius)
    else:
        raise ValueError(f"unknown replacement {replacement!r}")
    return out


def mask_batch(
    batch: np.ndarray,
    fraction: float,
    radius: int,
    replacement: Replacement,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask every patch of ``batch`` (shape ``(B, *spatial)``) independently.

    Returns the network input (masked pixels replaced) and the boolean mask.
    """
    inputs = np.empty(batch.shape, dtype=np.float32)
    masks = np.empty(batch.shape, dtype=bool)
    for i, patch in enumerate(batch):
        masks[i] = blind_spot_mask(patch.shape, fraction, rng)
        inputs[i] = apply_blind_spots(patch, masks[i], radius, replacement, rng)
    return inputs, masks
