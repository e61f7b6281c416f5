"""Blind-spot masking: realised fraction, neighbour-only replacement, explicit mask."""

from __future__ import annotations

import numpy as np
import pytest

from n2vpipe.masking import apply_blind_spots, blind_spot_mask, mask_batch, neighbour_offsets


@pytest.mark.parametrize("shape", [(256, 256), (32, 128, 128)])
@pytest.mark.parametrize("fraction", [0.002, 0.01, 0.05])
def test_realised_fraction_is_within_15_percent(shape: tuple[int, ...], fraction: float) -> None:
    rng = np.random.default_rng(0)
    realised = np.mean([blind_spot_mask(shape, fraction, rng).mean() for _ in range(20)])
    assert abs(realised / fraction - 1) < 0.15, realised


def test_mask_is_stratified() -> None:
    """For some grid offset, every 10x10 box (fraction 1/100 in 2D) holds exactly one masked pixel."""
    mask = blind_spot_mask((200, 200), 1 / 100, np.random.default_rng(1))
    points = np.argwhere(mask)

    def max_per_box(offset_y: int, offset_x: int) -> int:
        boxes = (points + [offset_y, offset_x]) // 10
        return int(np.unique(boxes, axis=0, return_counts=True)[1].max())

    assert 361 <= len(points) <= 441
    assert min(max_per_box(dy, dx) for dy in range(10) for dx in range(10)) == 1


@pytest.mark.parametrize("shape", [(64, 64), (12, 40, 40)])
@pytest.mark.parametrize("radius", [1, 2])
def test_uniform_replacement_comes_from_a_neighbour_never_the_centre(shape: tuple[int, ...], radius: int) -> None:
    rng = np.random.default_rng(2)
    patch = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32)  # every value unique
    mask = blind_spot_mask(shape, 0.05, rng)
    mask[(0,) * len(shape)] = True  # a corner, where clipping is needed
    out = apply_blind_spots(patch, mask, radius, "uniform", rng)
    for point in np.argwhere(mask):
        source = np.argwhere(patch == out[tuple(point)])[0]
        distance = np.abs(source - point)
        assert distance.max() <= radius and distance.any(), (point, source)
    assert np.array_equal(out[~mask], patch[~mask])


def test_median_replacement_excludes_the_centre() -> None:
    rng = np.random.default_rng(3)
    patch = rng.normal(size=(9, 9)).astype(np.float32)
    patch[4, 4] = 1000.0
    mask = np.zeros_like(patch, dtype=bool)
    mask[4, 4] = True
    out = apply_blind_spots(patch, mask, 1, "median", rng)
    neighbours = [patch[4 + dy, 4 + dx] for dy, dx in neighbour_offsets(2, 1)]
    assert out[4, 4] == pytest.approx(np.median(neighbours))


def test_mask_keeps_pixels_whose_replacement_equals_the_original() -> None:
    """Constant (e.g. low-count) data: every replacement equals the original, yet the mask is kept."""
    batch = np.full((2, 64, 64), 3.0, dtype=np.float32)
    inputs, masks = mask_batch(batch, 0.01, 2, "uniform", np.random.default_rng(4))
    assert masks.sum() > 40
    assert np.array_equal(inputs, batch)


def test_masking_is_reproducible_with_the_same_seed() -> None:
    batch = np.random.default_rng(5).normal(size=(2, 8, 32, 32)).astype(np.float32)
    first = mask_batch(batch, 0.01, 2, "uniform", np.random.default_rng(6))
    second = mask_batch(batch, 0.01, 2, "uniform", np.random.default_rng(6))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
