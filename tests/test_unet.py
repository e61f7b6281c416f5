"""U-Net shapes, receptive field, and tiled prediction equal to whole-volume prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from n2vpipe.io import ImageMeta
from n2vpipe.model_io import Normalisation
from n2vpipe.predict import Block, plan_blocks, predict_block, run_network
from n2vpipe.unet import UNet, UNetSpec, anisotropic_pooling, receptive_reach, total_downsampling

SPECS = [
    UNetSpec(ndim=2, depth=2, base_filters=4),
    UNetSpec(ndim=3, depth=2, base_filters=4),
    UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2))),
    UNetSpec(ndim=3, depth=3, base_filters=2, batch_norm=False),
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_output_shape_matches_input_for_odd_sizes(spec: UNetSpec) -> None:
    model = UNet(spec).eval()
    shape = (13, 37, 41)[-spec.ndim:]
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = run_network(model, data, total_downsampling(spec), torch.device("cpu"))
    assert out.shape == shape


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_receptive_reach_bounds_the_measured_influence(spec: UNetSpec) -> None:
    """Gradient of one output voxel w.r.t. the input is zero beyond the computed reach, nonzero near it.

    Positive weights and inputs keep every ReLU active, so the gradient shows the true extent.
    """
    torch.manual_seed(0)
    model = UNet(spec).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.abs() + 0.01)
    grid = total_downsampling(spec)
    reach = receptive_reach(spec)
    size = tuple(-(-2 * (r + g) // g) * g for r, g in zip(reach, grid))  # 2 * (reach + grid), on the grid
    x = torch.rand(1, 1, *size, requires_grad=True)
    centre = tuple(s // 2 for s in size)
    model(x)[(0, 0, *centre)].backward()
    influenced = np.argwhere(x.grad[0, 0].abs().numpy() > 0)
    for axis in range(spec.ndim):
        extent = np.abs(influenced[:, axis] - centre[axis]).max()
        assert extent <= reach[axis], (axis, extent, reach)
        assert extent >= reach[axis] - grid[axis], (axis, extent, reach)


def test_anisotropic_pooling_keeps_z_until_voxels_are_comparable() -> None:
    assert anisotropic_pooling(2, (0.4, 0.1, 0.1)) == ((1, 2, 2), (1, 2, 2))
    assert anisotropic_pooling(2, (0.2, 0.1, 0.1)) == ((1, 2, 2), (2, 2, 2))
    assert anisotropic_pooling(2, (0.1, 0.1, 0.1)) == ((2, 2, 2), (2, 2, 2))


@pytest.mark.parametrize("block_shape", [(8, 16, 16), (16, 32, 16), (24, 48, 56)])
def test_tiled_prediction_equals_whole_volume_prediction(block_shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    spec = UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)))
    model = UNet(spec).eval()
    # nontrivial BatchNorm statistics, as after training
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    shape = (21, 50, 57)
    volume = np.random.default_rng(2).normal(100, 10, size=shape).astype(np.float32)
    meta = ImageMeta("zyx", shape, "float32", (1.0, 1.0, 1.0))
    norm = Normalisation((100.0,), (10.0,))
    grid, halo, cpu = total_downsampling(spec), receptive_reach(spec), torch.device("cpu")
    whole = predict_block(volume, meta, model, norm, Block(0, 0, (0, 0, 0), shape), halo, grid, cpu)
    tiled = np.full(shape, np.nan, dtype=np.float32)
    for block in plan_blocks(meta, block_shape, block_shape, grid):
        region = tuple(slice(a, b) for a, b in zip(block.start, block.stop))
        tiled[region] = predict_block(volume, meta, model, norm, block, halo, grid, cpu)
    assert not np.isnan(tiled).any()
    assert np.abs(tiled - whole).max() <= 1e-4 * (whole.max() - whole.min())


def test_blocks_off_the_pooling_grid_are_refused() -> None:
    meta = ImageMeta("zyx", (32, 64, 64), "uint16", (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="pooling grid"):
        plan_blocks(meta, (16, 30, 32), (16, 30, 32), (4, 4, 4))
