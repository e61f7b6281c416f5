"""U-Net shapes, receptive field, N2V2, cropped forward, and tiled prediction equal to whole-volume prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from n2vpipe.io import ImageMeta, blosc_compressor, create_ome_zarr, open_ome_zarr
from n2vpipe.model_io import ModelDescription, Normalisation, save_model
from n2vpipe.predict import PredictConfig, halo_on_grid, plan_blocks, predict_volume, read_with_halo, run_network
from n2vpipe.unet import (
    SLAB_VOXELS,
    MaxBlurPool,
    UNet,
    UNetSpec,
    anisotropic_pooling,
    parameter_count,
    receptive_reach,
    total_downsampling,
    upsample_conv,
)

SPECS = [
    UNetSpec(ndim=2, depth=2, base_filters=4, batch_norm=True),
    UNetSpec(ndim=3, depth=2, base_filters=4, batch_norm=True),
    UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), batch_norm=True),
    UNetSpec(ndim=3, depth=3, base_filters=2, batch_norm=False),
    UNetSpec(ndim=2, depth=2, base_filters=4, n2v2=True, batch_norm=True),
    UNetSpec(ndim=3, depth=2, base_filters=4, n2v2=True, batch_norm=True),
    UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), n2v2=True, batch_norm=True),
    UNetSpec(ndim=3, depth=3, base_filters=2, pooling=((1, 2, 2), (1, 2, 2), (2, 2, 2)), n2v2=True, batch_norm=True),
]


def _trained_like(spec: UNetSpec, seed: int = 0) -> UNet:
    """A model in eval mode with nontrivial BatchNorm statistics, as after training."""
    torch.manual_seed(seed)
    model = UNet(spec).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_output_shape_matches_input_for_odd_sizes(spec: UNetSpec) -> None:
    model = UNet(spec).eval()
    shape = (13, 37, 41)[-spec.ndim:]
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = run_network(model, data, total_downsampling(spec), torch.device("cpu"))
    assert out.shape == shape


@pytest.mark.parametrize("arithmetic", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_half_precision_run_is_close_to_float32_but_not_the_same_arithmetic(spec: UNetSpec,
                                                                            arithmetic: torch.dtype) -> None:
    """bfloat16 and float16 autocast (the transposed-convolution upsampling included) run every spec and
    track float32.

    Random weights with random BatchNorm statistics cancel more than trained ones, so the bound is loose;
    on trained models the denoised PSNR is the same to 0.01 dB (benchmarks/results/precision_quality.md)."""
    model = _trained_like(spec)
    data = np.random.default_rng(1).normal(size=(12, 40, 40)[-spec.ndim:]).astype(np.float32)
    grid = total_downsampling(spec)
    exact = run_network(model, data, grid, torch.device("cpu"))
    fast = run_network(model, data, grid, torch.device("cpu"), arithmetic=arithmetic)
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    assert not np.array_equal(fast, exact)
    assert np.corrcoef(fast.ravel(), exact.ravel())[0, 1] > 0.98


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
    size = tuple(-(-2 * (r + g) // g) * g for r, g in zip(reach, grid, strict=True))  # 2 * (reach + grid), on the grid
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
@pytest.mark.parametrize("n2v2", [False, True])
def test_tiled_prediction_equals_whole_volume_prediction(block_shape: tuple[int, ...], n2v2: bool,
                                                         tmp_path: Path) -> None:
    """What production runs (predict_volume: the block jobs behind predict_part, reading a real OME-Zarr and
    a saved model, BatchNorm folded, writing chunks) gives ``model(whole volume)``."""
    spec = UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), n2v2=n2v2, batch_norm=True)
    model = _trained_like(spec, seed=1)
    shape = (21, 50, 57)
    volume = np.random.default_rng(2).normal(100, 10, size=shape).astype(np.float32)
    meta = ImageMeta("zyx", shape, "float32", (1.0, 1.0, 1.0))
    norm = Normalisation((100.0,), (10.0,))
    raw = create_ome_zarr(tmp_path / "raw.ome.zarr", meta, (8, 16, 16), blosc_compressor("zstd", 1), "raw")
    raw[:] = volume
    save_model(model, ModelDescription(spec=spec, normalisation=norm, spatial_axes="zyx"), tmp_path / "model")
    grid = total_downsampling(spec)
    whole = norm.invert(run_network(model, norm.apply(volume, 0), grid, torch.device("cpu")), 0)
    assert len(plan_blocks(meta, block_shape, block_shape, grid)) > 1
    stats = predict_volume(tmp_path / "raw.ome.zarr", tmp_path / "model", tmp_path / "denoised.ome.zarr",
                           PredictConfig(block=dict(zip("zyx", block_shape, strict=True)), device="cpu",
                                         precision="float32", pyramid_levels=1), threads=2)
    assert stats.voxels == volume.size
    tiled, _ = open_ome_zarr(tmp_path / "denoised.ome.zarr")
    # rtol: float32 rounding of the added-back mean (N2V2's blur makes an untrained model's output very flat)
    np.testing.assert_allclose(tiled[:], whole, rtol=1e-6, atol=1e-4 * (whole.max() - whole.min()))


def test_blocks_read_a_grid_aligned_halo_inside_the_volume_and_none_beyond_its_border() -> None:
    spec = UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), batch_norm=True)
    halo = halo_on_grid(spec)
    assert receptive_reach(spec) == (13, 23, 23) and halo == (14, 24, 24)  # rounded up to the grid (2, 4, 4)
    shape = (20, 64, 96)
    meta = ImageMeta("zyx", shape, "float32", (1.0, 1.0, 1.0))
    volume = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    first, middle = plan_blocks(meta, (20, 32, 32), (20, 32, 32), total_downsampling(spec))[:2]
    data, margins = read_with_halo(volume, meta, first, halo)
    assert margins == ((0, 0), (0, 24), (0, 24)) and data.shape == (20, 56, 56)
    data, margins = read_with_halo(volume, meta, middle, halo)
    assert margins == ((0, 0), (0, 24), (24, 24)) and data.shape == (20, 56, 80)
    assert data[0, 0, 0] == volume[0, 0, 8]


def test_blocks_off_the_pooling_grid_are_refused() -> None:
    meta = ImageMeta("zyx", (32, 64, 64), "uint16", (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="pooling grid"):
        plan_blocks(meta, (16, 30, 32), (16, 30, 32), (4, 4, 4))


def test_spec_from_an_older_description_without_n2v2_is_plain_n2v() -> None:
    old = {"ndim": 3, "depth": 2, "base_filters": 8, "batch_norm": True, "pooling": [[1, 2, 2], [2, 2, 2]],
           "in_channels": 1, "out_channels": 1}
    assert UNetSpec.from_dict(old).n2v2 is False
    spec = UNetSpec(ndim=3, depth=2, base_filters=32, batch_norm=True, n2v2=True, pooling=((1, 2, 2), (2, 2, 2)))
    assert UNetSpec.from_dict(spec.to_dict()) == spec


def test_n2v2_drops_the_top_skip_connection_and_adds_no_parameters_for_the_blur() -> None:
    plain, n2v2 = (UNet(UNetSpec(ndim=3, depth=2, base_filters=8, batch_norm=True, n2v2=flag))
                   for flag in (False, True))
    assert plain.decoders[-1][0].in_channels == 16 + 8
    assert n2v2.decoders[-1][0].in_channels == 16
    assert n2v2.decoders[0][0].in_channels == plain.decoders[0][0].in_channels == 32 + 16
    assert parameter_count(plain) - parameter_count(n2v2) == 8 * 8 * 27
    assert set(plain.state_dict()) == set(n2v2.state_dict())


def test_max_blur_pool_blurs_pooled_axes_only() -> None:
    impulse = torch.zeros(1, 1, 4, 8, 8)
    impulse[0, 0, 1, 4, 4] = 1.0
    out = MaxBlurPool((1, 2, 2))(impulse)
    assert out.shape == (1, 1, 4, 4, 4)
    # max over [4, 5) at stride 1 covers fine rows 3 and 4; the [1, 2, 1] / 4 blur centred on
    # fine rows 2 and 4 weighs them 1/4 and 3/4
    profile = torch.tensor([0.0, 0.25, 0.75, 0.0])
    expected = torch.zeros(4, 4, 4)
    expected[1] = profile[:, None] * profile[None, :]
    torch.testing.assert_close(out[0, 0], expected)


@pytest.mark.parametrize("factors", [(2, 2), (3, 1), (1, 2, 2), (2, 2, 2)], ids=str)
def test_upsample_conv_equals_nearest_upsampling_then_convolution(factors: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, *(4, 5, 3)[:len(factors)], dtype=torch.float64)
    weight = torch.randn(7, 5, *(3,) * len(factors), dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64)
    convolve = F.conv3d if len(factors) == 3 else F.conv2d
    expected = convolve(F.interpolate(x, scale_factor=factors, mode="nearest"), weight, bias, padding=1)
    torch.testing.assert_close(upsample_conv(x, weight, factors, bias), expected, rtol=1e-12, atol=1e-12)


def _textbook_forward(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """The U-Net as usually written: upsample, concatenate the skip, convolve."""
    spec, skips = model.spec, []
    for encoder, pool in zip(model.encoders, model.pools, strict=True):
        x = encoder(x)
        skips.append(x)
        x = pool(x)
    x = model.bottom(x)
    for level, decoder in zip(reversed(range(spec.depth)), model.decoders, strict=True):
        x = F.interpolate(x, scale_factor=spec.pooling[level], mode="nearest")
        if not (spec.n2v2 and level == 0):
            x = torch.cat([x, skips[level]], dim=1)
        x = decoder(x)
    return model.head(x)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_forward_and_gradients_equal_the_textbook_unet(spec: UNetSpec) -> None:
    model = _trained_like(spec).double().train()
    x = torch.randn(2, 1, *(16, 24, 32)[-spec.ndim:], dtype=torch.float64)
    results = []
    for run in (model, lambda t: _textbook_forward(model, t)):
        model.zero_grad()
        out = run(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (ours, our_grads), (textbook, textbook_grads) = results
    torch.testing.assert_close(ours, textbook, rtol=1e-10, atol=1e-10)
    for ours_grad, textbook_grad in zip(our_grads, textbook_grads, strict=True):
        torch.testing.assert_close(ours_grad, textbook_grad, rtol=1e-8, atol=1e-10)


def _central(tensor: torch.Tensor, margins: tuple[int, ...]) -> torch.Tensor:
    return tensor[(..., *(slice(m, n - m) for m, n in zip(margins, tensor.shape[2:], strict=True)))]


# Slabs of one row each, of a few rows (ragged last slab) and of the whole input.
SLAB_SIZES = (1, 5000, SLAB_VOXELS)
CROPPED_CASES = [
    (UNetSpec(ndim=2, depth=2, base_filters=4, batch_norm=True), (68, 84), None),
    (UNetSpec(ndim=2, depth=3, base_filters=4, n2v2=True, batch_norm=True), (136, 128), (5, 60)),
    (UNetSpec(ndim=3, depth=2, base_filters=4, batch_norm=True), (52, 56, 64), None),
    (UNetSpec(ndim=3, depth=2, base_filters=4, batch_norm=True), (24, 24, 32), (1, 3, 10)),
    (UNetSpec(ndim=3, depth=2, base_filters=4, n2v2=True, batch_norm=True), (60, 60, 64), None),
    (UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), batch_norm=True), (34, 56, 60), None),
    (UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), n2v2=True, batch_norm=True),
     (34, 64, 68), None),
    (UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), n2v2=True, batch_norm=True),
     (16, 40, 40), (2, 7, 19)),
]


@pytest.mark.parametrize(("spec", "shape", "margins"), CROPPED_CASES, ids=str)
def test_forward_cropped_equals_the_central_crop_of_forward(spec: UNetSpec, shape: tuple[int, ...],
                                                            margins: tuple[int, ...] | None) -> None:
    model = _trained_like(spec)
    margins = margins or receptive_reach(spec)
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        whole = model(x)
        for slab_voxels in SLAB_SIZES:
            cropped = model.forward_cropped(x, margins, slab_voxels)
            assert cropped.shape[2:] == tuple(n - 2 * m for n, m in zip(shape, margins, strict=True))
            torch.testing.assert_close(cropped, _central(whole, margins), rtol=1e-5, atol=1e-5)


def test_forward_cropped_refuses_training_mode_and_empty_outputs() -> None:
    model = UNet(UNetSpec(ndim=2, base_filters=2, depth=2, batch_norm=True))
    with pytest.raises(RuntimeError, match="eval mode"):
        model.forward_cropped(torch.zeros(1, 1, 32, 32), 4)
    with pytest.raises(ValueError, match="margin"):
        model.eval().forward_cropped(torch.zeros(1, 1, 32, 32), 16)
    with pytest.raises(ValueError, match="margin"):
        model.eval().forward_cropped(torch.zeros(1, 1, 32, 32), [(0, 32), (0, 0)])


@pytest.mark.parametrize("n2v2", [False, True])
def test_forward_cropped_with_uneven_margins_equals_that_crop_of_forward(n2v2: bool) -> None:
    spec = UNetSpec(ndim=3, depth=2, base_filters=4, pooling=((1, 2, 2), (2, 2, 2)), n2v2=n2v2, batch_norm=True)
    model = _trained_like(spec)
    x = torch.randn(1, 1, 24, 48, 56)
    margins = [(0, 9), (17, 0), (3, 21)]
    with torch.no_grad():
        whole = model(x)
        for slab_voxels in SLAB_SIZES:
            cropped = model.forward_cropped(x, margins, slab_voxels)
            torch.testing.assert_close(cropped, whole[..., 0:15, 17:48, 3:35], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n2v2", [False, True])
def test_forward_cropped_needs_far_fewer_flops_on_a_block_with_its_halo(n2v2: bool) -> None:
    spec = UNetSpec(ndim=3, depth=2, base_filters=32, n2v2=n2v2, batch_norm=True)
    model = UNet(spec).to("meta").eval()
    x = torch.empty(1, 1, 64, 96, 96, device="meta")
    flops = []
    for run in (model, lambda t: model.forward_cropped(t, receptive_reach(spec))):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            run(x)
        flops.append(counter.get_total_flops())
    assert flops[1] < 0.8 * flops[0]


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.elements = max(self.elements, tensor.numel())
        return out


@pytest.mark.parametrize("n2v2", [False, True])
def test_forward_cropped_in_slabs_never_makes_a_full_size_feature_tensor(n2v2: bool) -> None:
    spec = UNetSpec(ndim=3, depth=2, base_filters=8, n2v2=n2v2, batch_norm=True)
    model = _trained_like(spec)
    x = torch.randn(1, 1, 64, 96, 96)
    largest = {}
    with torch.no_grad():
        for name, run in (("whole", model), ("slabs", lambda t: model.forward_cropped(t, 24, slab_voxels=96 * 96))):
            with _LargestTensor() as tracker:
                run(x)
            largest[name] = tracker.elements
    assert largest["whole"] >= 8 * x.numel()
    assert largest["slabs"] < largest["whole"] / 4
