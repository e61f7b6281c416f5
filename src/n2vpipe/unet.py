"""2D/3D U-Net for Noise2Void and N2V2, with per-axis pooling and its receptive field.

Each level has two 3-wide convolutions (BatchNorm optional, ReLU), downsampling
with a per-level, per-axis factor ((1, 2, 2) keeps Z resolution for strongly
anisotropic stacks), nearest-neighbour upsampling and skip connections, then a
1x1 output convolution.

Nearest upsampling followed by the first decoder convolution is computed as one
transposed convolution on the coarse features (:func:`upsample_conv`): the same
function and weights, with 8/27 of the multiply-adds for the upsampled channels
of an isotropic 3D level and no upsampled tensor in memory.

Inference on a block with its halo (:meth:`UNet.forward_cropped`) runs each level in
slabs of rows along the first spatial axis, keeping only the part of each skip tensor
that the decoder reads: no feature tensor of the block's size is ever made, which
bounds memory for large blocks (a few rows next to each slab are computed twice).

N2V2 (Höck et al. 2022) removes the checkerboard artefacts of Noise2Void with
two changes: max-blur-pooling (max pooling at stride 1, then a binomial
``[1, 2, 1] / 4`` blur with the pooling stride, on pooled axes only) and no skip
connection at the top, full-resolution level.

Receptive field: a convolution at a level whose voxels are ``j`` input voxels
wide reaches ``j`` further in each direction; a max pooling step by ``p``
reaches ``(p - 1) * j`` further in the worst alignment, and the blur of
max-blur-pooling one fine voxel (``j``) more on either side. Nearest
upsampling adds nothing beyond the alignment already counted at pooling.
:func:`receptive_reach` adds these along the deepest path (which both variants
keep); the full receptive field is ``2 * reach + 1``.

This file imports nothing from n2vpipe at load time: bioimage.io packages ship it as is as
their architecture source (:func:`unet_from_architecture` is the callable they name).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

CONVS_PER_LEVEL = 2
BLUR_TAPS = (1.0, 2.0, 1.0)


@dataclass(frozen=True)
class UNetSpec:
    """Everything needed to rebuild a network: stored in the model's JSON.

    ``depth``, ``base_filters`` and ``batch_norm`` have no defaults here: they are training settings,
    defaulted once, in ``config/schema.yaml`` (:class:`~n2vpipe.train.TrainConfig` holds them equal)."""

    ndim: int
    depth: int
    base_filters: int
    batch_norm: bool
    pooling: tuple[tuple[int, ...], ...] = field(default=())
    in_channels: int = 1
    out_channels: int = 1
    n2v2: bool = False

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        pooling = self.pooling or tuple((2,) * self.ndim for _ in range(self.depth))
        pooling = tuple(tuple(int(f) for f in level) for level in pooling)
        if len(pooling) != self.depth or any(len(level) != self.ndim for level in pooling):
            raise ValueError(f"pooling {pooling} must list {self.depth} levels of {self.ndim} factors")
        object.__setattr__(self, "pooling", pooling)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {**asdict(self), "pooling": [list(level) for level in self.pooling]}

    @classmethod
    def from_dict(cls, data: dict) -> UNetSpec:
        """Inverse of :meth:`to_dict`; a description without ``n2v2`` (older models) means plain N2V."""
        return cls(**{**data, "pooling": tuple(tuple(level) for level in data["pooling"])})


def anisotropic_pooling(depth: int, spatial_scale: Sequence[float]) -> tuple[tuple[int, ...], ...]:
    """Per-level pooling that skips Z while Z voxels are coarse (:func:`~n2vpipe.geometry.z_is_coarse`).

    Imported here, not at the top: the module must load without n2vpipe in a bioimage.io package."""
    from n2vpipe.geometry import z_is_coarse

    if len(spatial_scale) == 2:
        return tuple((2, 2) for _ in range(depth))
    z_scale, y_scale = spatial_scale[0], spatial_scale[1]
    levels = []
    for _ in range(depth):
        pool_z = 1 if z_is_coarse(z_scale, y_scale) else 2
        levels.append((pool_z, 2, 2))
        y_scale *= 2
        z_scale *= pool_z
    return tuple(levels)


def total_downsampling(spec: UNetSpec) -> tuple[int, ...]:
    """Product of pooling strides per axis (both variants): input sizes and block origins sit on this grid."""
    return tuple(math.prod(level[axis] for level in spec.pooling) for axis in range(spec.ndim))


def _pooling_reach(factor: int, n2v2: bool) -> int:
    """Extra reach of one pooling step, in units of the finer level's voxels."""
    blur = len(BLUR_TAPS) // 2 if n2v2 and factor > 1 else 0
    return factor - 1 + blur


def receptive_reach(spec: UNetSpec) -> tuple[int, ...]:
    """How many input voxels, per axis and in each direction, can influence one output voxel."""
    reach = []
    for axis in range(spec.ndim):
        jump, total = 1, 0
        for level in spec.pooling:
            total += CONVS_PER_LEVEL * jump
            total += _pooling_reach(level[axis], spec.n2v2) * jump
            jump *= level[axis]
        total += CONVS_PER_LEVEL * jump
        for level in reversed(spec.pooling):
            jump //= level[axis]
            total += CONVS_PER_LEVEL * jump
        reach.append(total)
    return tuple(reach)


def receptive_field(spec: UNetSpec) -> tuple[int, ...]:
    """Full receptive field width per axis (``2 * reach + 1``)."""
    return tuple(2 * r + 1 for r in receptive_reach(spec))


def _conv(ndim: int) -> type[nn.Module]:
    return nn.Conv3d if ndim == 3 else nn.Conv2d


def _conv_block(ndim: int, in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Two 3-wide convolutions, each followed by optional BatchNorm and ReLU."""
    norm = nn.BatchNorm3d if ndim == 3 else nn.BatchNorm2d
    layers: list[nn.Module] = []
    for channels_in in (in_channels, out_channels):
        layers.append(_conv(ndim)(channels_in, out_channels, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(norm(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _upsample_taps(factor: int) -> torch.Tensor:
    """``(factor + 2, 3)`` 0/1 matrix: which taps of a 3-wide kernel on nearest-upsampled data hit each coarse offset.

    Row ``t + 1`` is fine offset ``t`` (in ``[-1, factor]``) from ``factor`` times a coarse
    index; tap ``k`` reads fine voxel ``f + k - 1``, i.e. coarse voxel ``(f + k - 1) // factor``.
    """
    offsets = torch.arange(-1, factor + 1)[:, None]
    taps = torch.arange(3)[None, :]
    return ((taps >= 1 - offsets) & (taps <= factor - offsets)).float()


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, factors: tuple[int, ...],
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(upsample_nearest(x, factors), weight, bias, padding=1)`` as one transposed convolution.

    A fine voxel's 3-wide window covers at most two coarse voxels per upsampled axis,
    so the kernel folds into a ``factor + 2`` wide transposed kernel with stride ``factor``.
    """
    kernel = weight
    for axis, factor in enumerate(factors):
        folded = torch.tensordot(kernel, _upsample_taps(factor).to(kernel), dims=([2 + axis], [1]))
        kernel = torch.movedim(folded, -1, 2 + axis)
    transposed = F.conv_transpose3d if len(factors) == 3 else F.conv_transpose2d
    return transposed(x, kernel.transpose(0, 1), bias, stride=factors, padding=1)


class MaxBlurPool(nn.Module):
    """N2V2 downsampling: max pooling at stride 1, then a fixed binomial blur with the pooling stride.

    Axes with factor 1 are neither pooled nor blurred. The blur kernel is a
    non-persistent buffer, so it is not a parameter and not in the state dict.
    """

    def __init__(self, factors: tuple[int, ...]) -> None:
        super().__init__()
        self.factors = factors
        kernel = torch.ones(())
        for factor in factors:
            taps = torch.tensor(BLUR_TAPS) if factor > 1 else torch.ones(1)
            kernel = kernel[..., None] * (taps / taps.sum())
        self.register_buffer("kernel", kernel, persistent=False)
        self.padding = tuple(len(BLUR_TAPS) // 2 if factor > 1 else 0 for factor in factors)

    def forward(self, x: torch.Tensor, first_axis_ends: tuple[bool, bool] = (True, True)) -> torch.Tensor:
        """Downsample ``x`` of shape ``(B, C, *spatial)`` by the factors.

        ``first_axis_ends``: whether ``x`` ends there along the first spatial axis, where
        the blur pads with zeros. Where it does not, ``x`` is a slab of a larger tensor that
        brings one more row on that side than its pooled rows need (see
        :meth:`UNet._encode_level_in_slabs`).
        """
        three_d = len(self.factors) == 3
        x = (F.max_pool3d if three_d else F.max_pool2d)(x, kernel_size=self.factors, stride=1)
        padding = self.padding
        if padding[0] and first_axis_ends != (True, True):
            x, padding = _zero_extended(x, *first_axis_ends), (0, *padding[1:])
        weight = self.kernel.to(x.dtype).expand(x.shape[1], 1, *self.kernel.shape)
        conv = F.conv3d if three_d else F.conv2d
        return conv(x, weight, stride=self.factors, padding=padding, groups=x.shape[1])


def _pool(spec: UNetSpec, factors: tuple[int, ...]) -> nn.Module:
    """Max pooling for N2V, max-blur-pooling for N2V2."""
    if spec.n2v2:
        return MaxBlurPool(factors)
    pool = nn.MaxPool3d if spec.ndim == 3 else nn.MaxPool2d
    return pool(kernel_size=factors, stride=factors)


Window = tuple[tuple[int, int], ...]
SLAB_VOXELS = 2**20


def _is_conv(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.conv._ConvNd)


def _zero_extended(x: torch.Tensor, before: bool, after: bool) -> torch.Tensor:
    """``x`` with a row of zeros before and/or after its first spatial axis (the blur's padding in a slab)."""
    if not (before or after):
        return x
    return F.pad(x, (0, 0) * (x.ndim - 3) + (int(before), int(after)))


def _convolve_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lo: int, hi: int,
                   rows: int) -> torch.Tensor:
    """Rows ``[lo, hi)`` of a 3-wide convolution (padding 1) of a tensor of ``rows`` rows, from its rows
    ``[max(0, lo - 1), min(rows, hi + 1))`` in ``x``.

    Where a slab touches an end, the convolution's own zero padding stands in for the
    missing row (no padded copy of ``x``), and the extra row it yields at the other side
    is dropped.
    """
    convolve = F.conv3d if x.ndim == 5 else F.conv2d
    at_end = lo == 0 or hi == rows
    out = convolve(x, weight, bias, padding=(int(at_end),) + (1,) * (x.ndim - 3))
    if not at_end:
        return out
    first = lo - max(0, lo - 1)
    return out[:, :, first:first + hi - lo]


RowSource = Callable[[int, int], torch.Tensor]


def _rows_of(layers: Sequence[nn.Module], source: RowSource, rows: int, lo: int, hi: int) -> torch.Tensor:
    """Rows ``[lo, hi)`` (first spatial axis) of ``layers`` applied to a tensor of ``rows`` rows,
    whose rows ``[a, b)`` ``source(a, b)`` computes.

    ``layers`` are 3-wide convolutions with padding 1 and pointwise layers (BatchNorm in
    eval mode, ReLU). Each convolution reads one row more on each side than it writes:
    rows computed by the layers before it, or its zero padding past the ends.
    """
    last = max((i for i, layer in enumerate(layers) if _is_conv(layer)), default=None)
    if last is None:
        out, tail = source(lo, hi), layers
    else:
        inner = _rows_of(layers[:last], source, rows, max(0, lo - 1), min(rows, hi + 1))
        out = _convolve_rows(inner, layers[last].weight, layers[last].bias, lo, hi, rows)
        tail = layers[last + 1:]
    for layer in tail:
        out = layer(out)
    return out


def _upsample_conv_rows(x: torch.Tensor, weight: torch.Tensor, factors: tuple[int, ...],
                        bias: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """Rows ``[lo, hi)`` of ``upsample_conv(x, weight, factors, bias)``, from the coarse rows they read."""
    factor, coarse_rows = factors[0], x.shape[2]
    first, last = max(0, (lo - 1) // factor), min(coarse_rows, hi // factor + 1)
    fine = upsample_conv(x[:, :, first:last], weight, factors, bias)
    return fine[:, :, lo - first * factor:hi - first * factor]


def _slab_rows(plane: Sequence[int], slab_voxels: int) -> int:
    """Rows (first spatial axis) of ``plane``-sized rows in a slab of about ``slab_voxels`` voxels; at least one."""
    return max(1, slab_voxels // math.prod(plane))


def _empty_like_rows(part: torch.Tensor, rows: int) -> torch.Tensor:
    """Uninitialised tensor like ``part`` (dtype, device, channels-last), ``rows`` long on the first spatial axis."""
    return torch.empty((*part.shape[:2], rows, *part.shape[3:]), dtype=part.dtype, device=part.device,
                       memory_format=memory_format(part.ndim - 2))


def margin_pairs(margin: int | Sequence[int | tuple[int, int]], ndim: int) -> Window:
    """``(before, after)`` per axis from one margin for all ends, one per axis, or pairs per axis."""
    per_axis = (margin,) * ndim if isinstance(margin, int) else tuple(margin)
    if len(per_axis) != ndim:
        raise ValueError(f"margin {margin} needs one entry per axis ({ndim})")
    return tuple((m, m) if isinstance(m, int) else (int(m[0]), int(m[1])) for m in per_axis)


def _grow(window: Window, by: int, shape: Sequence[int]) -> Window:
    """``window`` grown by ``by`` on each side, clipped to ``[0, shape)``."""
    return tuple((max(0, lo - by), min(n, hi + by)) for (lo, hi), n in zip(window, shape, strict=True))


def _coarsen(window: Window, factors: Sequence[int]) -> Window:
    """Smallest window of the coarser level whose nearest upsampling covers ``window``."""
    return tuple((lo // f, -(-hi // f)) for (lo, hi), f in zip(window, factors, strict=True))


def _starts(window: Window) -> tuple[int, ...]:
    """First voxel of ``window`` per axis."""
    return tuple(lo for lo, _ in window)


def _crop(x: torch.Tensor, window: Window, origin: Sequence[int]) -> torch.Tensor:
    """The part of ``x`` (whose first voxel sits at ``origin``) inside ``window``."""
    return x[(..., *(slice(lo - o, hi - o) for (lo, hi), o in zip(window, origin, strict=True)))]


class UNet(nn.Module):
    """U-Net built from a :class:`UNetSpec`; input sizes must be multiples of the total downsampling."""

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.base_filters * 2**level for level in range(spec.depth + 1)]
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels = spec.in_channels
        for level in range(spec.depth):
            self.encoders.append(_conv_block(spec.ndim, channels, widths[level], spec.batch_norm))
            self.pools.append(_pool(spec, spec.pooling[level]))
            channels = widths[level]
        self.bottom = _conv_block(spec.ndim, channels, widths[spec.depth], spec.batch_norm)
        self.decoders = nn.ModuleList()
        for level in reversed(range(spec.depth)):
            skip_width = 0 if self._drops_skip(level) else widths[level]
            self.decoders.append(
                _conv_block(spec.ndim, widths[level + 1] + skip_width, widths[level], spec.batch_norm)
            )
        self.head = _conv(spec.ndim)(widths[0], spec.out_channels, kernel_size=1)

    def _drops_skip(self, level: int) -> bool:
        """N2V2 has no skip connection at the top (full-resolution) level."""
        return self.spec.n2v2 and level == 0

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder path: the pooled input of the bottom block, and the skip tensors from the top down."""
        skips = []
        for encoder, pool in zip(self.encoders, self.pools, strict=True):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        return x, skips

    def _encode_level_in_slabs(self, level: int, x: torch.Tensor, window: Window,
                               slab_voxels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder block ``level`` and its pooling, in slabs of about ``slab_voxels`` (rows of the first spatial axis).

        Returns the pooled tensor and the ``window`` of the block's output that the
        decoder reads (``None`` where N2V2 drops it); the block's whole output never
        exists (unless it is a single slab). Max-blur-pooling reads one row past each side
        of a slab, which is computed twice; max pooling reads none.
        """
        layers, pool, factor = list(self.encoders[level]), self.pools[level], self.spec.pooling[level][0]
        reach = 1 if self.spec.n2v2 and factor > 1 else 0
        rows, step = x.shape[2], max(factor, _slab_rows(x.shape[3:], slab_voxels) // factor * factor)
        (skip_lo, skip_hi), *across = window
        slabs = [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]
        pooled = skip = None
        for lo, hi in slabs:
            read_lo, read_hi = max(0, lo - reach), min(rows, hi + reach)
            features = _rows_of(layers, lambda a, b: x[:, :, a:b], rows, read_lo, read_hi)
            part = pool(features, (lo == 0, hi == rows)) if reach else pool(features)
            if len(slabs) == 1:
                return part, None if self._drops_skip(level) else _crop(features, window, (0,) * len(window))
            if pooled is None:
                pooled = _empty_like_rows(part, rows // factor)
                if not self._drops_skip(level):
                    skip = _empty_like_rows(features[(..., *(slice(a, b) for a, b in across))], skip_hi - skip_lo)
            pooled[:, :, lo // factor:hi // factor] = part
            first, last = max(lo, skip_lo), min(hi, skip_hi)
            if skip is not None and first < last:
                origin = (read_lo, *(0 for _ in across))
                skip[:, :, first - skip_lo:last - skip_lo] = _crop(features, ((first, last), *across), origin)
        return pooled, skip

    def _decode(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The decoder block of ``level`` on ``cat([upsample(x), skip])``, building neither tensor.

        The block's first convolution is split into :func:`upsample_conv` on ``x`` and a
        convolution of ``skip`` (only its shape is used where N2V2 drops the skip).
        """
        block = self.decoders[len(self.decoders) - 1 - level]
        conv, up_width = block[0], x.shape[1]
        x = upsample_conv(x, conv.weight[:, :up_width], self.spec.pooling[level], conv.bias)
        if not self._drops_skip(level):
            convolve = F.conv3d if self.spec.ndim == 3 else F.conv2d
            x = x + convolve(skip, conv.weight[:, up_width:], padding=1)
        for layer in list(block)[1:]:
            x = layer(x)
        return x

    def _decode_level_in_slabs(self, level: int, x: torch.Tensor, skip: torch.Tensor | None, window: Window,
                               needed: Window, offset: Sequence[int], slab_voxels: int) -> torch.Tensor:
        """The decoder block of ``level`` (and the head at the top) on its input ``window``, cropped to ``needed``.

        ``x`` is the coarser level's output; its nearest upsampling starts ``offset`` fine
        voxels before ``window``, whose part of the skip tensor ``skip`` is (``None`` where
        N2V2 drops it). Runs in slabs of about ``slab_voxels`` (output rows of the first spatial axis),
        as :meth:`_decode` on the window would (zero padding at its edges), so that no
        tensor of the window's size is made; rows next to a slab are computed twice.
        """
        block = self.decoders[len(self.decoders) - 1 - level]
        conv, up_width = block[0], x.shape[1]
        (window_lo, window_hi), *window_across = window
        rows = window_hi - window_lo

        def first_conv_rows(lo: int, hi: int) -> torch.Tensor:
            """Rows of the block's first convolution on ``cat([upsample(x), skip])`` (window coordinates)."""
            up = _upsample_conv_rows(x, conv.weight[:, :up_width], self.spec.pooling[level], conv.bias,
                                     lo + offset[0], hi + offset[0])
            up = up[(..., *(slice(o, o + b - a) for o, (a, b) in zip(offset[1:], window_across, strict=True)))]
            if skip is None:
                return up
            near = skip[:, :, max(0, lo - 1):min(rows, hi + 1)]
            return _convolve_rows(near, conv.weight[:, up_width:], None, lo, hi, rows).add_(up)

        (keep_lo, keep_hi), *keep_across = [(lo - w, hi - w) for (lo, hi), (w, _) in zip(needed, window, strict=True)]
        step = _slab_rows([b - a for a, b in window_across], slab_voxels)
        slabs = [(lo, min(lo + step, keep_hi)) for lo in range(keep_lo, keep_hi, step)]
        out = None
        for lo, hi in slabs:
            part = _rows_of(list(block)[1:], first_conv_rows, rows, lo, hi)
            part = part[(..., *(slice(a, b) for a, b in keep_across))]
            if level == 0:
                part = self.head(part)
            if len(slabs) == 1:
                return part
            if out is None:
                out = _empty_like_rows(part, keep_hi - keep_lo)
            out[:, :, lo - keep_lo:hi - keep_lo] = part
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x`` of shape ``(B, C, *spatial)``."""
        x, skips = self._encode(x)
        x = self.bottom(x)
        for level in reversed(range(self.spec.depth)):
            x = self._decode(level, x, skips[level])
        return self.head(x)

    def forward_cropped(self, x: torch.Tensor, margin: int | Sequence[int | tuple[int, int]],
                        slab_voxels: int = SLAB_VOXELS) -> torch.Tensor:
        """``self(x)`` less ``margin`` voxels at the ends of each axis, running the decoder only where needed.

        ``margin`` is one number for every end, one per axis, or a ``(before, after)``
        pair per axis. Equals ``self(x)[..., before:-after, ...]`` (up to float rounding). The encoder
        runs on all of ``x``; the bottom block and each decoder level run only on
        the window that the rest of the network needs: the central output grown
        by the remaining convolutions' reach, rounded out to the coarser level's
        voxels for the upsampling convolution. A window edge inside ``x`` gives wrong values
        only within that reach of the edge, which are then cropped away, so the
        result is exact. With ``margin`` at least :func:`receptive_reach`, the
        output does not depend on how ``x`` was padded. BatchNorm must be in eval
        mode (batch statistics of a cropped tensor differ).

        Memory: every level runs in slabs of about ``slab_voxels`` voxels, and each encoder level keeps
        only the window of its output that the decoder reads (:meth:`_encode_level_in_slabs`,
        :meth:`_decode_level_in_slabs`), so no tensor of the input's size and the network's
        width is ever made.
        """
        if self.training and self.spec.batch_norm:
            raise RuntimeError("forward_cropped needs eval mode: BatchNorm batch statistics depend on the crop")
        spatial = tuple(x.shape[2:])
        margins = margin_pairs(margin, self.spec.ndim)
        if any(lo < 0 or hi < 0 or lo + hi >= n for (lo, hi), n in zip(margins, spatial, strict=True)):
            raise ValueError(f"margin {margin} does not leave an output inside the input {spatial}")
        needed, windows = self._decoder_windows(spatial, margins)
        skips = []
        for level in range(self.spec.depth):
            x, skip = self._encode_level_in_slabs(level, x, windows[level], slab_voxels)
            skips.append(skip)
        x = self.bottom(_crop(x, windows[-1], (0,) * self.spec.ndim))
        x = _crop(x, needed[-1], _starts(windows[-1]))
        for level in reversed(range(self.spec.depth)):
            offset = [lo - c * f for lo, (c, _), f in
                      zip(_starts(windows[level]), needed[level + 1], self.spec.pooling[level], strict=True)]
            x = self._decode_level_in_slabs(level, x, skips.pop(), windows[level], needed[level], offset, slab_voxels)
        return x

    def _decoder_windows(self, spatial: tuple[int, ...], margins: Window) -> tuple[list[Window], list[Window]]:
        """Per level, top first: the needed output window of its decoder (bottom block last), and its input window."""
        shape = list(spatial)
        needed: list[Window] = [tuple((lo, n - hi) for (lo, hi), n in zip(margins, spatial, strict=True))]
        windows: list[Window] = []
        for level in range(self.spec.depth + 1):
            windows.append(_grow(needed[level], CONVS_PER_LEVEL, shape))
            if level < self.spec.depth:
                factors = self.spec.pooling[level]
                needed.append(_coarsen(windows[level], factors))
                shape = [n // f for n, f in zip(shape, factors, strict=True)]
        return needed, windows


def unet_from_architecture(**architecture: object) -> UNet:
    """The untrained network of a :meth:`UNetSpec.to_dict` description (the callable a bioimage.io package names)."""
    return UNet(UNetSpec.from_dict(architecture))


def memory_format(ndim: int) -> torch.memory_format:
    """Channels-last layout: oneDNN's fast path for convolutions on CPU (about 1.6x here for 3D training)."""
    return torch.channels_last_3d if ndim == 3 else torch.channels_last


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
