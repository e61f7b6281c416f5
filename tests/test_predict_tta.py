"""Test-time augmentation: the flips and rotations of the image plane, and their mean over a real tiled run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from n2vpipe.io import ImageMeta, blosc_compressor, create_ome_zarr, open_ome_zarr
from n2vpipe.model_io import ModelDescription, Normalisation, save_model
from n2vpipe.predict import (
    PredictConfig,
    plane_symmetries,
    predict_volume,
    run_network,
    turn_margins,
    turn_plane,
    unturn_plane,
)
from n2vpipe.unet import UNet, UNetSpec, total_downsampling

CPU = torch.device("cpu")


class PlaneFilter(torch.nn.Module):
    """A 3x3 filter over Y and X with zero padding, with the cropped forward pass the predictor uses."""

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        self.kernel = kernel.reshape(1, 1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter each plane (2D input, or every Z plane of 3D input)."""
        planes = x.reshape(-1, 1, *x.shape[-2:])
        return F.conv2d(planes, self.kernel, padding=1).reshape(x.shape)

    def forward_cropped(self, x: torch.Tensor, margins: list[tuple[int, int]]) -> torch.Tensor:
        """``forward`` less ``margins``."""
        out = self(x)
        return out[(..., *(slice(lo, n - hi) for (lo, hi), n in zip(margins, x.shape[2:], strict=True)))]


def test_every_plane_symmetry_is_undone_and_z_never_moves() -> None:
    volume = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    turned = [turn_plane(volume, s) for s in plane_symmetries((1, 4, 4))]
    assert len({t.tobytes() for t in map(np.ascontiguousarray, turned)}) == 8
    for symmetry, image in zip(plane_symmetries((1, 4, 4)), turned, strict=True):
        np.testing.assert_array_equal(unturn_plane(image, symmetry), volume)
        assert all(set(image[z].ravel()) == set(volume[z].ravel()) for z in range(3))
    assert plane_symmetries((1, 2, 4)) == [(0, False), (0, True), (2, False), (2, True)]


@pytest.mark.parametrize("symmetry", plane_symmetries((4, 4)))
def test_margins_follow_the_turned_array(symmetry: tuple[int, bool]) -> None:
    image = np.random.default_rng(0).normal(size=(2, 11, 17))
    margins = ((0, 1), (2, 3), (4, 1))
    turned = turn_margins(margins, symmetry)
    crop = image[tuple(slice(lo, n - hi) for (lo, hi), n in zip(margins, image.shape, strict=True))]
    turned_image = turn_plane(image, symmetry)
    turned_crop = turned_image[tuple(slice(lo, n - hi) for (lo, hi), n in zip(turned, turned_image.shape,
                                                                                  strict=True))]
    np.testing.assert_array_equal(turned_crop, turn_plane(crop, symmetry))


@pytest.mark.parametrize("margins", [None, ((3, 2), (0, 5))])
def test_tta_of_a_flip_and_rotation_equivariant_filter_is_the_filter(margins: tuple | None) -> None:
    image = np.random.default_rng(1).normal(size=(30, 26)).astype(np.float32)
    symmetric = PlaneFilter(torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16)
    plain = run_network(symmetric, image, (4, 4), CPU, margins)
    np.testing.assert_allclose(run_network(symmetric, image, (4, 4), CPU, margins, tta=True), plain,
                               rtol=1e-6, atol=1e-6)
    shifting = PlaneFilter(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    shifted = run_network(shifting, image, (4, 4), CPU, margins)
    averaged = run_network(shifting, image, (4, 4), CPU, margins, tta=True)
    assert averaged.shape == shifted.shape and np.abs(averaged - shifted).max() > 0.5


def test_tiled_tta_prediction_equals_whole_volume_tta(tmp_path: Path) -> None:
    """predict_volume with tta (real OME-Zarr, saved model, blocks with halos, a volume off the pooling grid)
    gives the mean over the plane symmetries of the whole volume's prediction, and differs from no TTA."""
    spec = UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), batch_norm=False)
    torch.manual_seed(3)
    model = UNet(spec).eval()
    shape = (10, 50, 45)
    volume = np.random.default_rng(4).normal(100, 10, size=shape).astype(np.float32)
    meta = ImageMeta("zyx", shape, "float32", (1.0, 1.0, 1.0))
    norm = Normalisation((100.0,), (10.0,))
    raw = create_ome_zarr(tmp_path / "raw.ome.zarr", meta, (8, 16, 16), blosc_compressor("zstd", 1), "raw")
    raw[:] = volume
    save_model(model, ModelDescription(spec=spec, normalisation=norm, spatial_axes="zyx"), tmp_path / "model")
    grid = total_downsampling(spec)
    whole = norm.invert(run_network(model, norm.apply(volume, 0), grid, CPU, tta=True), 0)
    plain = norm.invert(run_network(model, norm.apply(volume, 0), grid, CPU), 0)
    predict_volume(tmp_path / "raw.ome.zarr", tmp_path / "model", tmp_path / "denoised.ome.zarr",
                   PredictConfig(block={"z": 8, "y": 32, "x": 16}, device="cpu", precision="float32",
                                 pyramid_levels=1, tta=True), threads=2)
    tiled, _ = open_ome_zarr(tmp_path / "denoised.ome.zarr")
    scale = whole.max() - whole.min()
    np.testing.assert_allclose(tiled[:], whole, rtol=1e-6, atol=1e-4 * scale)
    assert np.abs(whole - plain).max() > 1e-2 * scale
