"""Blind-spot masking: realised fraction, neighbour-only replacement, explicit mask, structN2V."""

from __future__ import annotations

import numpy as np
import pytest

from n2vpipe.masking import apply_blind_spots, blind_spot_mask, mask_batch, neighbour_offsets, struct_offsets


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


@pytest.mark.parametrize("shape", [(20, 20), (6, 12, 12)])
def test_median_replacement_uses_only_neighbours_inside_the_patch(shape: tuple[int, ...]) -> None:
    """At borders and corners too, the replacement is the median of the in-patch neighbourhood without the centre."""
    rng = np.random.default_rng(12)
    patch = rng.normal(size=shape).astype(np.float32)
    mask = blind_spot_mask(shape, 0.1, rng)
    mask[(0,) * len(shape)] = mask[(-1,) * len(shape)] = True
    out = apply_blind_spots(patch, mask, 2, "median", rng)
    for point in np.argwhere(mask):
        box = tuple(slice(max(c - 2, 0), c + 3) for c in point)
        neighbourhood = np.delete(patch[box].ravel(), np.ravel_multi_index(point - [b.start for b in box],
                                                                           patch[box].shape))
        assert out[tuple(point)] == pytest.approx(np.median(neighbourhood)), point
    assert np.array_equal(out[~mask], patch[~mask])


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
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


LINE_X = [[1, 1, 1, 1, 1]]


def _struct_hidden(mask: np.ndarray, struct_mask: list) -> np.ndarray:
    """Every in-patch position a struct mask covers around a blind spot of ``mask``, the blind spot excluded."""
    kernel = np.asarray(struct_mask, dtype=bool)
    kernel = kernel.reshape((1,) * (mask.ndim - kernel.ndim) + kernel.shape)
    centre = np.array(kernel.shape) // 2
    hidden = np.zeros(mask.shape, dtype=bool)
    for point in np.argwhere(mask):
        for index in np.argwhere(kernel):
            position = point + index - centre
            if index.tolist() != centre.tolist() and np.all((position >= 0) & (position < mask.shape)):
                hidden[tuple(position)] = True
    return hidden


@pytest.mark.parametrize("shape, struct_mask", [
    ((64, 64), LINE_X),
    ((12, 40, 40), LINE_X),  # a 2D mask on 3D patches applies per Z plane
    ((12, 40, 40), [[[1]], [[1]], [[1]]]),
    ((12, 40, 40), np.ones((3, 3, 3), dtype=int).tolist()),
])
@pytest.mark.parametrize("replacement", ["uniform", "median"])
def test_struct_mask_hides_exactly_its_positions_with_values_from_the_patch_range(
        shape: tuple[int, ...], struct_mask: list, replacement: str) -> None:
    rng = np.random.default_rng(7)
    patch = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32)  # every value unique
    mask = blind_spot_mask(shape, 0.01, rng)
    mask[(0,) * len(shape)] = True  # a corner: struct positions outside the patch are dropped
    out = apply_blind_spots(patch, mask, 2, replacement, rng, struct_offsets(struct_mask, len(shape)))
    hidden = _struct_hidden(mask, struct_mask)
    assert np.array_equal((out != patch) & ~mask, hidden & ~mask)
    values = out[hidden & ~mask]
    assert patch.min() <= values.min() and values.max() <= patch.max()
    assert values.std() > 0.2 * np.ptp(patch), "struct values should spread over the patch's range"


def test_struct_mask_leaves_the_loss_mask_on_the_blind_spots_only() -> None:
    """Changed pixels are exactly the blind spots and their struct positions: the mask holds no struct position."""
    batch = np.random.default_rng(8).permutation(2 * 12 * 40 * 40).reshape(2, 12, 40, 40).astype(np.float32)
    inputs, masks = mask_batch(batch, 0.01, 2, "uniform", np.random.default_rng(9), struct_mask=LINE_X)
    for patch, network_input, mask in zip(batch, inputs, masks, strict=True):
        hidden = _struct_hidden(mask, LINE_X)
        assert hidden.sum() > 2 * mask.sum()
        assert np.array_equal(network_input != patch, mask | hidden)


@pytest.mark.parametrize("shape", [(256, 256), (32, 128, 128)])
def test_struct_mask_keeps_the_realised_fraction(shape: tuple[int, ...]) -> None:
    batch = np.zeros((8, *shape), dtype=np.float32)
    _, masks = mask_batch(batch, 0.002, 2, "uniform", np.random.default_rng(10), struct_mask=LINE_X)
    assert abs(masks.mean() / 0.002 - 1) < 0.15, masks.mean()


@pytest.mark.parametrize("struct_mask, message", [
    ([[1, 1, 1, 1]], "odd size on every axis"),
    ([1, 1, 1], "must be 2D or 3D"),
    ([[[[1]]]], "must be 2D or 3D"),
    ([[[1, 1, 1]]], "3D struct mask cannot be used on 2D patches"),
    ([[1, 0, 1]], "centre of the struct mask"),
    ([[1, 2, 1]], "only 0/1 values"),
    ([[1, 1, 1], [1]], "rectangular"),
])
def test_bad_struct_masks_are_rejected(struct_mask: list, message: str) -> None:
    batch = np.zeros((1, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        mask_batch(batch, 0.01, 2, "uniform", np.random.default_rng(11), struct_mask=struct_mask)
