"""Blind-spot masking for Noise2Void, N2V2 and structN2V, as pure functions with an explicit RNG.

The mask is always an explicit boolean array: the loss is taken exactly on the
chosen pixels, including those whose replacement happens to equal the original
value (common in low-count integer data). A structN2V mask (Broaddus et al.
2020) also hides the pixels around each blind spot whose noise is correlated
with it (e.g. along camera rows) behind random values; the loss stays on the
blind spots alone.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np
import numpy.typing as npt

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


def blind_spot_points(shape: tuple[int, ...], count: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Stratified blind spots for ``count`` patches of ``shape``: rows of ``(patch index, *position)``.

    Per patch, a grid of ``side**ndim`` boxes starts at a random offset; each box
    holds one uniformly placed candidate, kept with probability
    ``fraction * side**ndim``, so the expected masked fraction equals ``fraction``
    exactly in any dimension (juglab/n2v's 3D square-root box masks ~20x too few voxels).
    """
    ndim = len(shape)
    side = stratified_box_side(ndim, fraction)
    keep_probability = fraction * side**ndim
    box_starts = [np.arange(math.ceil((n + side - 1) / side)) * side for n in shape]  # cover any offset
    grid = np.stack(np.meshgrid(*box_starts, indexing="ij"), axis=-1).reshape(1, -1, ndim)
    offsets = rng.integers(-side + 1, 1, size=(count, 1, ndim))
    points = offsets + grid + rng.integers(0, side, size=(count, grid.shape[1], ndim))
    inside = np.all((points >= 0) & (points < np.asarray(shape)), axis=2)
    kept = inside & (rng.random(inside.shape) < keep_probability)
    patch_index = np.broadcast_to(np.arange(count)[:, None], kept.shape)[kept]
    return np.column_stack([patch_index, points[kept]])


def blind_spot_mask(shape: tuple[int, ...], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask over ``shape`` with ``fraction`` of the pixels chosen (see :func:`blind_spot_points`)."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(blind_spot_points(shape, 1, fraction, rng)[:, 1:].T)] = True
    return mask


def neighbour_offsets(ndim: int, radius: int) -> np.ndarray:
    """All integer offsets within a cube of ``radius`` around the centre, excluding the centre."""
    if radius < 1:
        raise ValueError(f"neighbourhood radius must be >= 1, got {radius}")
    grid = itertools.product(range(-radius, radius + 1), repeat=ndim)
    return np.array([o for o in grid if any(o)], dtype=np.int64)


def struct_offsets(struct_mask: npt.ArrayLike, ndim: int) -> np.ndarray:
    """Offsets from a blind spot to the other pixels a structN2V mask hides, as ``(n, ndim)`` integers.

    ``struct_mask`` is a 2D or 3D array of 0/1 with an odd size on every axis,
    centred on the blind spot, whose centre (the blind spot itself) must be 1.
    A 2D (YX) mask on 3D patches applies per Z plane, as if of shape ``(1, h, w)``.
    """
    try:
        mask = np.asarray(struct_mask)
    except ValueError as err:
        raise ValueError(f"struct mask must be a rectangular array of 0/1 values ({err})") from None
    if mask.dtype.kind not in "biu" or not np.isin(mask, (0, 1)).all():
        raise ValueError(f"struct mask must hold only 0/1 values, got {mask.tolist()}")
    if mask.ndim not in (2, 3):
        raise ValueError(f"struct mask must be 2D or 3D, got shape {mask.shape}")
    if mask.ndim > ndim:
        raise ValueError(f"a {mask.ndim}D struct mask cannot be used on {ndim}D patches")
    if any(size % 2 == 0 for size in mask.shape):
        raise ValueError(f"struct mask must have an odd size on every axis (centred on the blind spot), "
                         f"got shape {mask.shape}")
    mask = mask.astype(bool).reshape((1,) * (ndim - mask.ndim) + mask.shape)
    centre = np.array(mask.shape) // 2
    if not mask[tuple(centre)]:
        raise ValueError(f"the centre of the struct mask (the blind spot itself) must be 1, got shape {mask.shape} "
                         f"with centre {tuple(int(c) for c in centre)} unset")
    offsets = np.argwhere(mask) - centre
    return offsets[np.any(offsets != 0, axis=1)]


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


def _median_neighbours(batch: np.ndarray, points: np.ndarray, radius: int) -> np.ndarray:
    """Median of the in-bounds neighbourhood of each ``(patch index, *position)`` point, centre excluded (N2V2)."""
    offsets = neighbour_offsets(batch.ndim - 1, radius)
    flat_index = points[:, :1]
    inside = np.ones((len(points), len(offsets)), dtype=bool)
    for axis, size in enumerate(batch.shape[1:]):
        coord = points[:, axis + 1, None] + offsets[None, :, axis]
        inside &= (coord >= 0) & (coord < size)
        flat_index = flat_index * size + np.clip(coord, 0, size - 1)
    values = np.ravel(batch).take(flat_index).astype(np.float32)
    values[~inside] = np.nan
    values.sort(axis=1)  # NaN (outside the patch) sorts last
    count = inside.sum(axis=1)
    rows = np.arange(len(values))
    return 0.5 * (values[rows, (count - 1) // 2].astype(np.float64) + values[rows, count // 2])


def _hide_struct_neighbours(out: np.ndarray, batch: np.ndarray, points: np.ndarray, struct: np.ndarray,
                            rng: np.random.Generator) -> None:
    """Give every in-bounds pixel at ``struct`` offsets from a point a uniform value from its patch's range."""
    hidden = (points[:, None, 1:] + struct[None, :, :]).reshape(-1, struct.shape[1])
    owner = np.repeat(points[:, 0], len(struct))
    inside = np.all((hidden >= 0) & (hidden < np.asarray(batch.shape[1:])), axis=1)
    hidden, owner = hidden[inside], owner[inside]
    flat = batch.reshape(len(batch), -1)
    low, high = flat.min(axis=1)[owner], flat.max(axis=1)[owner]
    out[(owner, *hidden.T)] = rng.uniform(low, high)


def _replace_blind_spots(batch: np.ndarray, points: np.ndarray, radius: int, replacement: Replacement,
                         rng: np.random.Generator, struct: np.ndarray | None) -> np.ndarray:
    """Float32 copy of ``batch`` with the ``(patch index, *position)`` points replaced, as :func:`apply_blind_spots`."""
    out = batch.astype(np.float32, copy=True)
    if len(points) == 0:
        return out
    if replacement == "uniform":
        source = _uniform_neighbours(points[:, 1:], batch.shape[1:], radius, rng)
        out[tuple(points.T)] = batch[(points[:, 0], *source.T)]
    elif replacement == "median":
        out[tuple(points.T)] = _median_neighbours(batch, points, radius)
    else:
        raise ValueError(f"unknown replacement {replacement!r}")
    if struct is not None and len(struct):
        _hide_struct_neighbours(out, batch, points, struct, rng)
    return out


def apply_blind_spots(
    patch: np.ndarray,
    mask: np.ndarray,
    radius: int,
    replacement: Replacement,
    rng: np.random.Generator,
    struct: np.ndarray | None = None,
) -> np.ndarray:
    """Return a copy of ``patch`` with every masked pixel replaced from its neighbourhood.

    ``uniform`` (N2V) copies a uniformly chosen neighbour within ``radius``;
    ``median`` (N2V2) takes the median of the neighbourhood. The centre value is
    never used for its own replacement. With ``struct`` (offsets from
    :func:`struct_offsets`), every pixel at those offsets from a masked pixel
    that lies inside the patch then gets a value drawn uniformly from the
    patch's value range (structN2V), another blind spot's replacement included.
    """
    return _replace_blind_spots(patch[None], np.argwhere(mask[None]), radius, replacement, rng, struct)[0]


def mask_batch(
    batch: np.ndarray,
    fraction: float,
    radius: int,
    replacement: Replacement,
    rng: np.random.Generator,
    struct_mask: npt.ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask every patch of ``batch`` (shape ``(B, *spatial)``) independently.

    ``struct_mask`` (see :func:`struct_offsets`) turns on structN2V. Returns the
    network input (masked and struct-hidden pixels replaced) and the boolean
    loss mask, which holds the blind spots only.
    """
    struct = None if struct_mask is None else struct_offsets(struct_mask, batch.ndim - 1)
    points = blind_spot_points(batch.shape[1:], len(batch), fraction, rng)
    masks = np.zeros(batch.shape, dtype=bool)
    masks[tuple(points.T)] = True
    return _replace_blind_spots(batch, points, radius, replacement, rng, struct), masks
