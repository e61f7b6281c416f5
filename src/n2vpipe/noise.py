"""Noise check before training: is the noise independent from voxel to voxel, and how strong is it?

Noise2Void removes only noise that is independent from voxel to voxel; noise correlated along an
axis (camera row stripes, scan-line noise) is learned as signal and survives. From a sample of
blocks of the raw OME-Zarr this module measures, per spatial axis, the autocorrelation at lags
1..``MAX_LAG`` of a high-pass residual (block minus its Gaussian blur) in the flattest half of the
voxels, minus what the high-pass alone gives white noise, and fits a Poisson-Gaussian model
(variance = gain * intensity + offset) to the residual variance per intensity bin. An axis whose
excess lag-1 correlation exceeds the threshold is flagged, with the struct mask that hides every
neighbour along it whose excess stays above the threshold (structN2V, ``train.struct_mask``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from n2vpipe.errors import InputError
from n2vpipe.io import ImageMeta, open_ome_zarr, read_region, write_json

log = logging.getLogger(__name__)

MAX_LAG = 6
"""Largest lag (voxels) at which the autocorrelation is measured."""
HIGH_PASS_SIGMA = 2.0
"""Gaussian sigma (voxels) of the blur subtracted to leave the noise (the high-pass residual)."""
FLAT_FRACTION = 0.5
"""Fraction of each sample's voxels, those with the smallest blurred gradient, taken as free of structure."""
BLOCK_EDGE = {3: {"z": 16, "y": 64, "x": 64}, 2: {"y": 256, "x": 256}}
"""Edge (voxels) of each sampled block per axis, by number of spatial axes; cut to the image."""
MIN_BLOCKS = 4
"""Fewest blocks sampled per channel, whatever the sample fraction: enough flat voxels for a
correlation known to about +-0.005."""
CLIPPED_FRACTION = 0.01
"""Fraction of sampled voxels at the smallest value above which that value counts as clipped and is left out."""
INTENSITY_BINS = 12
"""Intensity bins (quantiles of the blurred intensity) of the variance-versus-mean fit."""


@dataclass(frozen=True)
class AxisCorrelation:
    """Noise autocorrelation along one axis: measured, white-noise baseline, and their difference."""

    axis: str
    measured: list[float]
    white_baseline: list[float]
    excess: list[float]
    flagged: bool
    correlation_length: int


@dataclass(frozen=True)
class NoiseLevel:
    """Poisson-Gaussian fit of the noise variance against intensity, and the binned points it fits."""

    gain: float
    offset: float
    std_at_median: float
    bin_mean: list[float]
    bin_variance: list[float]
    bin_count: list[int]


@dataclass(frozen=True)
class ChannelNoise:
    """The noise check of one channel."""

    channel: int
    voxels_used: int
    axes: list[AxisCorrelation]
    level: NoiseLevel

    @property
    def flagged(self) -> list[AxisCorrelation]:
        """The axes whose noise is correlated beyond the threshold."""
        return [a for a in self.axes if a.flagged]


def block_starts(meta: ImageMeta, chunks: Sequence[int], count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Spatial corners of ``count`` sample blocks (edge :data:`BLOCK_EDGE`), each inside one zarr chunk
    where the chunk is large enough, so a block costs one chunk's decoding."""
    starts = []
    edges = block_edge(meta)
    for _ in range(count):
        corner = []
        for axis, size, chunk in zip(meta.spatial_axes, meta.spatial_shape, meta.spatial_chunks(chunks), strict=True):
            edge = edges[axis]
            chunk_start = int(rng.integers(0, math.ceil(size / chunk))) * chunk
            room = min(chunk, size - chunk_start) - edge
            start = chunk_start + int(rng.integers(0, room + 1)) if room >= 0 else int(rng.integers(0, size - edge + 1))
            corner.append(start)
        starts.append(tuple(corner))
    return starts


def block_edge(meta: ImageMeta) -> dict[str, int]:
    """Edge of the sampled blocks per spatial axis of ``meta``, cut to the image."""
    edges = BLOCK_EDGE[len(meta.spatial_axes)]
    return {axis: min(edges[axis], size) for axis, size in zip(meta.spatial_axes, meta.spatial_shape, strict=True)}


def blocks_to_sample(meta: ImageMeta, max_blocks: int, fraction: float) -> int:
    """Blocks per channel: enough to cover ``fraction`` of its voxels (all time points), at least
    :data:`MIN_BLOCKS` and at most ``max_blocks``, so the check costs a small share of the ingest."""
    voxels = math.prod(meta.spatial_shape) * meta.size("t")
    wanted = math.floor(fraction * voxels / math.prod(block_edge(meta).values()))
    return min(max_blocks, max(MIN_BLOCKS, wanted))


def block_keys(meta: ImageMeta, chunks: Sequence[int], channel: int, count: int, seed: int) -> list[tuple[Any, ...]]:
    """Array keys of ``count`` sample blocks of one channel at random places and time points."""
    rng = np.random.default_rng([seed, channel])
    keys = []
    for start in block_starts(meta, chunks, count, rng):
        stop = [s + block_edge(meta)[a] for s, a in zip(start, meta.spatial_axes, strict=True)]
        keys.append(meta.key(int(rng.integers(0, meta.size("t"))), channel, start, stop))
    return keys


def sample_blocks(path: Path, channel: int, count: int, seed: int) -> tuple[list[np.ndarray], ImageMeta]:
    """``count`` float64 blocks of one channel at random places and time points of the OME-Zarr at ``path``."""
    array, meta = open_ome_zarr(path)
    keys = block_keys(meta, array.chunks, channel, count, seed)
    return [read_region(array, key).astype(np.float64) for key in keys], meta


def high_pass_kernel(ndim: int) -> np.ndarray:
    """The impulse response of "identity minus Gaussian blur" (:data:`HIGH_PASS_SIGMA`) in ``ndim`` dimensions."""
    reach = int(4 * HIGH_PASS_SIGMA + 0.5) + MAX_LAG
    impulse = np.zeros((2 * reach + 1,) * ndim)
    impulse[(reach,) * ndim] = 1.0
    return impulse - ndimage.gaussian_filter(impulse, HIGH_PASS_SIGMA, mode="constant")


def lagged_products(values: np.ndarray, valid: np.ndarray, axis: int, lag: int) -> tuple[float, float, float]:
    """Sums of ``a*b``, ``a*a`` and ``b*b`` over pairs ``lag`` apart along ``axis`` where both are valid."""
    head = tuple(slice(None, -lag) if i == axis else slice(None) for i in range(values.ndim))
    tail = tuple(slice(lag, None) if i == axis else slice(None) for i in range(values.ndim))
    kept = np.where(valid, values, 0.0)
    a, b = kept[head], kept[tail]
    return float((a * b).sum()), float((a * a * valid[tail]).sum()), float((b * b * valid[head]).sum())


def white_baseline(ndim: int) -> np.ndarray:
    """Autocorrelation the high-pass alone gives white noise, shape ``(ndim, MAX_LAG)``: the
    normalised autocorrelation of :func:`high_pass_kernel` (the same on every axis)."""
    kernel = high_pass_kernel(ndim)
    full = np.ones(kernel.shape, dtype=bool)
    baseline = np.zeros((ndim, MAX_LAG))
    for axis in range(ndim):
        for lag in range(1, MAX_LAG + 1):
            ab, aa, bb = lagged_products(kernel, full, axis, lag)
            baseline[axis, lag - 1] = ab / math.sqrt(aa * bb)
    return baseline


def intensity_bins(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Bin index of each value among :data:`INTENSITY_BINS` quantile bins of ``values``, and the number of bins."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, INTENSITY_BINS + 1)))
    count = max(len(edges) - 1, 1)
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, count - 1), count


def flat_residuals(blocks: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per block: high-pass residual, blurred intensity and the mask of flat interior voxels (the
    :data:`FLAT_FRACTION` of all blocks' interior voxels with the smallest blurred gradient, leaving out
    those near a clipped floor), where structure leaks least into the residual."""
    border = int(math.ceil(2 * HIGH_PASS_SIGMA))
    prepared = []
    for block in blocks:
        blurred = ndimage.gaussian_filter(block, HIGH_PASS_SIGMA, mode="reflect")
        gradient = np.sqrt(sum(g**2 for g in np.gradient(blurred))) if min(block.shape) > 1 else np.zeros_like(block)
        interior = np.zeros(block.shape, dtype=bool)
        inner = tuple(slice(border, n - border) if n > 2 * border + MAX_LAG else slice(None) for n in block.shape)
        interior[inner] = True
        prepared.append((block - blurred, blurred, gradient, interior))
    floor = clipped_floor(blocks)
    usable = [interior & ~near_value(block, floor, border)
              for block, (*_, interior) in zip(blocks, prepared, strict=True)]
    gradients = np.concatenate([g[u] for (_, _, g, _), u in zip(prepared, usable, strict=True)])
    cut = np.quantile(gradients, FLAT_FRACTION) if gradients.size else -np.inf
    return [(residual, blurred, use & (gradient <= cut))
            for (residual, blurred, gradient, _), use in zip(prepared, usable, strict=True)]


def clipped_floor(blocks: Sequence[np.ndarray]) -> float | None:
    """The sample's smallest value when more than :data:`CLIPPED_FRACTION` of the voxels hold it (a
    background-subtracted or clipped image, whose plateaus carry no noise), else ``None``."""
    lowest = min(float(b.min()) for b in blocks)
    at_lowest = sum(int((b == lowest).sum()) for b in blocks) / sum(b.size for b in blocks)
    return lowest if at_lowest > CLIPPED_FRACTION else None


def near_value(block: np.ndarray, value: float | None, reach: int) -> np.ndarray:
    """Voxels within ``reach`` of one holding ``value`` (none when ``value`` is ``None``)."""
    if value is None:
        return np.zeros(block.shape, dtype=bool)
    return ndimage.binary_dilation(block == value, iterations=reach)


def axis_correlations(prepared: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], axes: str,
                      threshold: float) -> list[AxisCorrelation]:
    """Pooled residual autocorrelation at lags 1..MAX_LAG along each axis over the flat voxels, with
    the white-noise baseline removed; an axis is flagged when its excess at lag 1 exceeds ``threshold``."""
    baseline = white_baseline(len(axes))
    result = []
    for index, axis in enumerate(axes):
        measured = []
        for lag in range(1, MAX_LAG + 1):
            sums = np.zeros(3)
            for residual, _, flat in prepared:
                if residual.shape[index] > lag and flat.any():
                    sums += lagged_products(residual - residual[flat].mean(), flat, index, lag)
            measured.append(float(sums[0] / math.sqrt(sums[1] * sums[2])) if sums[1] > 0 and sums[2] > 0 else 0.0)
        excess = [m - b for m, b in zip(measured, baseline[index], strict=True)]
        length = next((lag for lag, e in enumerate(excess) if e <= threshold), MAX_LAG)
        result.append(AxisCorrelation(axis, measured, baseline[index].tolist(), excess, length > 0, length))
    return result


def noise_level(prepared: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], ndim: int) -> NoiseLevel:
    """Fit variance = gain * intensity + offset to the flat voxels' residual variance per intensity bin,
    the residual variance divided by what the high-pass keeps of white noise."""
    kept = float((high_pass_kernel(ndim) ** 2).sum())
    residual = np.concatenate([r[f] for r, _, f in prepared])
    intensity = np.concatenate([s[f] for _, s, f in prepared])
    which, count = intensity_bins(intensity)
    counts = np.bincount(which, minlength=count)
    used = np.flatnonzero(counts > 1)
    means = np.array([intensity[which == b].mean() for b in used])
    variances = np.array([residual[which == b].var() / kept for b in used])
    if len(used) > 1 and np.ptp(means) > 0:
        gain, offset = np.polyfit(means, variances, 1, w=np.sqrt(counts[used]))
    else:
        gain, offset = 0.0, float(variances.mean())
    median_variance = gain * float(np.median(intensity)) + offset
    return NoiseLevel(float(gain), float(offset), math.sqrt(max(median_variance, 0.0)), means.tolist(),
                      variances.tolist(), counts[used].tolist())


def check_channel(path: Path, channel: int, blocks: int, threshold: float, seed: int) -> ChannelNoise:
    """The noise check of one channel of the OME-Zarr at ``path`` from ``blocks`` sampled blocks."""
    sampled, meta = sample_blocks(path, channel, blocks, seed)
    prepared = flat_residuals(sampled)
    used = int(sum(f.sum() for _, _, f in prepared))
    if used < 1000:
        raise InputError(f"{path}: channel {channel} has only {used} flat voxels in its {blocks} sampled blocks, "
                         "too few for the noise check; raise qc.sample_fraction or check that the image is not blank")
    return ChannelNoise(channel, used, axis_correlations(prepared, meta.spatial_axes, threshold),
                        noise_level(prepared, len(meta.spatial_axes)))


def suggested_struct_mask(flagged: Sequence[AxisCorrelation], spatial_axes: str) -> list[Any]:
    """The structN2V mask hiding ``correlation_length`` neighbours on each side along every flagged axis:
    a 2D (YX) mask unless Z is flagged, a 3D (ZYX) one otherwise (see ``n2vpipe.masking.struct_offsets``)."""
    mask_axes = "zyx" if any(a.axis == "z" for a in flagged) else "yx"
    reach = {a.axis: a.correlation_length for a in flagged if a.axis in spatial_axes}
    shape = tuple(2 * reach.get(axis, 0) + 1 for axis in mask_axes)
    mask = np.zeros(shape, dtype=int)
    centre = tuple(n // 2 for n in shape)
    for index, axis in enumerate(mask_axes):
        line = list(centre)
        line[index] = slice(None)
        if axis in reach:
            mask[tuple(line)] = 1
    mask[centre] = 1
    return mask.tolist()


def struct_mask_lines(mask: list[Any]) -> str:
    """The config lines that set ``mask`` as ``train.struct_mask`` (YAML flow style)."""
    return f"train:\n  struct_mask: {json.dumps(mask)}"


def covers(configured: list[Any] | None, suggested: list[Any]) -> bool:
    """Whether the configured struct mask hides at least every neighbour the suggested one hides."""
    if configured is None:
        return False
    have, want = np.asarray(configured), np.asarray(suggested)
    depth = max(have.ndim, want.ndim)
    have, want = (m.reshape((1,) * (depth - m.ndim) + m.shape) for m in (have, want))
    size = np.maximum(have.shape, want.shape)
    padded = [np.pad(m, [((s - n) // 2, (s - n) // 2) for s, n in zip(size, m.shape, strict=True)])
              for m in (have, want)]
    return bool(np.all(padded[0] >= padded[1]))


def verdict(channels: Sequence[ChannelNoise], spatial_axes: str, threshold: float,
            configured_mask: list[Any] | None) -> dict[str, Any]:
    """The verdict: which axes carry correlated noise, over how many voxels, and the struct mask to use."""
    flagged: dict[str, AxisCorrelation] = {}
    for channel in channels:
        for axis in channel.flagged:
            if axis.axis not in flagged or axis.correlation_length > flagged[axis.axis].correlation_length:
                flagged[axis.axis] = axis
    if not flagged:
        return {"correlated": False, "axes": {}, "struct_mask": None, "config_lines": None, "covered_by_config": False,
                "message": f"noise is independent from voxel to voxel within the threshold {threshold} "
                           "(excess lag-1 autocorrelation): plain Noise2Void fits"}
    ordered = [flagged[a] for a in spatial_axes if a in flagged]
    described = ", ".join(f"{a.axis.upper()} (excess lag-1 autocorrelation {a.excess[0]:.2f} > {threshold}, "
                          f"correlation length {a.correlation_length} voxel{'s' * (a.correlation_length > 1)})"
                          for a in ordered)
    if len(ordered) == len(spatial_axes):
        return {"correlated": True, "axes": {a.axis: a.correlation_length for a in ordered}, "struct_mask": None,
                "config_lines": None, "covered_by_config": False,
                "message": f"noise is correlated along every axis: {described}; no struct mask helps with that. "
                           "The data looks smoothed, interpolated, binned after acquisition or lossy-compressed, "
                           "or its structure is finer than the check can tell from noise: denoise the unprocessed "
                           "acquisition where there is one, and judge this result with care"}
    mask = suggested_struct_mask(ordered, spatial_axes)
    lines = struct_mask_lines(mask)
    if covers(configured_mask, mask):
        advice = f"the configured train.struct_mask {json.dumps(configured_mask)} hides these neighbours"
    else:
        advice = f"plain Noise2Void keeps such noise as signal; use structN2V with:\n{lines}"
    return {"correlated": True, "axes": {a.axis: a.correlation_length for a in ordered}, "struct_mask": mask,
            "config_lines": lines, "covered_by_config": covers(configured_mask, mask),
            "message": f"noise is correlated along {described}; {advice}"}


def check_noise(path: Path, max_blocks: int, fraction: float, threshold: float, seed: int,
                configured_mask: list[Any] | None = None) -> dict[str, Any]:
    """The whole noise check of the OME-Zarr at ``path``: per channel correlations and noise level, and the
    verdict, from :func:`blocks_to_sample` blocks per channel."""
    _, meta = open_ome_zarr(path)
    blocks = blocks_to_sample(meta, max_blocks, fraction)
    channels = [check_channel(path, c, blocks, threshold, seed) for c in range(meta.size("c"))]
    return {
        "source": str(path),
        "settings": {"sample_blocks": max_blocks, "sample_fraction": fraction, "blocks_per_channel": blocks,
                     "correlation_threshold": threshold, "seed": seed, "max_lag": MAX_LAG,
                     "high_pass_sigma": HIGH_PASS_SIGMA, "flat_fraction": FLAT_FRACTION,
                     "block_edge": block_edge(meta)},
        "spatial_axes": meta.spatial_axes,
        "channels": [{**asdict(c), "flagged_axes": [a.axis for a in c.flagged]} for c in channels],
        "verdict": verdict(channels, meta.spatial_axes, threshold, configured_mask),
    }


def write_noise_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON atomically and log its verdict (a warning when the noise is correlated)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    message = f"{report['source']}: noise check: {report['verdict']['message']}"
    if noise_warning_of(report["verdict"]):
        log.warning("%s", message)
    else:
        log.info("%s", message)


def noise_warning(path: Path) -> str | None:
    """The verdict of the noise report at ``path`` when it asks for attention (correlated noise that the
    configured struct mask does not hide); ``None`` when it does not, or when there is no report yet."""
    try:
        verdict_of = json.loads(Path(path).read_text())["verdict"]
    except FileNotFoundError:
        return None
    return verdict_of["message"] if noise_warning_of(verdict_of) else None


def noise_warning_of(verdict_of: dict[str, Any]) -> bool:
    """Whether a verdict (see :func:`verdict`) asks for attention: correlated noise the config leaves unhidden."""
    return bool(verdict_of["correlated"] and not verdict_of["covered_by_config"])
