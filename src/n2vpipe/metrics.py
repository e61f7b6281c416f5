"""Residual diagnostics after inference: what the denoiser took out (residual = raw - denoised), on a
sample of blocks.

A good Noise2Void result leaves a residual that is noise alone: zero mean at every intensity (no
bias), no correlation between neighbours, no checkerboard, and nothing in common with the image's
detail. Each number below has a flag with a documented limit (docs/qc.md).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

from n2vpipe.io import open_ome_zarr, read_region, write_json
from n2vpipe.noise import HIGH_PASS_SIGMA, MAX_LAG, block_keys, blocks_to_sample, intensity_bins, lagged_products

log = logging.getLogger(__name__)

BIAS_LIMIT = 0.1
"""Flag ``bias`` when the residual mean in an intensity bin exceeds this fraction of the residual std there."""
CHECKERBOARD_LIMIT = 2.0
"""Flag ``checkerboard`` when the residual's mean power at the Nyquist frequencies exceeds its mean power
by this factor (white noise gives 1)."""
STRUCTURE_LIMIT = 0.1
"""Flag ``residual_structure`` when the residual's correlation with the denoised image's detail exceeds this."""
STRIPES_GONE_SHARE = 0.5
"""With noise flagged as correlated along an axis, the stripes count as gone when the residual carries at
least this share of the noise's excess lag-1 correlation along it (the correlated noise was taken out)."""


def stored_to_intensity(values: np.ndarray, zarr_path: Path, channel: int) -> np.ndarray:
    """Undo an integer output's rescaling (attribute ``n2vpipe.intensity``); float outputs pass through."""
    mapping = zarr.open_group(str(zarr_path), mode="r").attrs.get("n2vpipe", {}).get("intensity", {})
    if "scale" not in mapping:
        return values
    return mapping["offset"][channel] + mapping["scale"][channel] * values


def residual_autocorrelation(residuals: Sequence[np.ndarray], axes: str) -> dict[str, list[float]]:
    """Pooled autocorrelation of the mean-free residual at lags 1..MAX_LAG along each axis (0 for white noise)."""
    result = {}
    for index, axis in enumerate(axes):
        values = []
        for lag in range(1, MAX_LAG + 1):
            sums = np.zeros(3)
            for residual in residuals:
                if residual.shape[index] > lag:
                    sums += lagged_products(residual - residual.mean(), np.ones(residual.shape, bool), index, lag)
            values.append(float(sums[0] / math.sqrt(sums[1] * sums[2])) if sums[1] > 0 and sums[2] > 0 else 0.0)
        result[axis] = values
    return result


def checkerboard_index(residuals: Sequence[np.ndarray]) -> float:
    """Largest, over the axes, mean power of the residual's spectrum on that axis's Nyquist plane (frequency
    index n/2 of an even length n) over its mean power: about 1 for white noise, far more for a pattern
    alternating from voxel to voxel along that axis (a checkerboard)."""
    ndim = residuals[0].ndim
    nyquist, planes, power, count = np.zeros(ndim), np.zeros(ndim), 0.0, 0
    for residual in residuals:
        spectrum = np.abs(np.fft.fftn(residual - residual.mean())) ** 2
        power += float(spectrum.sum())
        count += spectrum.size
        for axis, n in enumerate(spectrum.shape):
            if n % 2 == 0:
                plane = np.take(spectrum, n // 2, axis=axis)
                nyquist[axis] += float(plane.sum())
                planes[axis] += plane.size
    if power == 0 or not planes.any():
        return 1.0
    return float(max(nyquist[planes > 0] / planes[planes > 0]) / (power / count))


def detail_correlation(residuals: Sequence[np.ndarray], denoised: Sequence[np.ndarray]) -> float:
    """Pearson correlation of the residual with the denoised image's detail (the image minus its Gaussian
    blur, sigma :data:`~n2vpipe.noise.HIGH_PASS_SIGMA`): structure taken out with the noise shows here."""
    r = np.concatenate([(x - x.mean()).ravel() for x in residuals])
    d = np.concatenate([(y - ndimage.gaussian_filter(y, HIGH_PASS_SIGMA, mode="reflect")).ravel() for y in denoised])
    d = d - d.mean()
    scale = math.sqrt(float(r @ r) * float(d @ d))
    return float(r @ d) / scale if scale > 0 else 0.0


def bias_per_bin(residuals: Sequence[np.ndarray], denoised: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Residual mean and std per intensity bin of the denoised image (quantile bins)."""
    r = np.concatenate([x.ravel() for x in residuals])
    d = np.concatenate([y.ravel() for y in denoised])
    which, count = intensity_bins(d)
    used = [b for b in range(count) if np.count_nonzero(which == b) > 1]
    return {"intensity": [float(d[which == b].mean()) for b in used],
            "residual_mean": [float(r[which == b].mean()) for b in used],
            "residual_std": [float(r[which == b].std()) for b in used],
            "count": [int(np.count_nonzero(which == b)) for b in used]}


def stripes_gone(autocorrelation: Mapping[str, list[float]], noise_axes: Mapping[str, float]) -> dict[str, bool]:
    """Per axis the noise check flagged (its excess lag-1 noise correlation given): whether the residual
    took out at least :data:`STRIPES_GONE_SHARE` of it, i.e. the correlated noise left the denoised image."""
    return {axis: autocorrelation[axis][0] >= STRIPES_GONE_SHARE * excess for axis, excess in noise_axes.items()}


def residual_metrics(raw: Sequence[np.ndarray], denoised: Sequence[np.ndarray], axes: str, threshold: float,
                     noise_axes: Mapping[str, float]) -> dict[str, Any]:
    """All residual diagnostics of matching raw and denoised blocks, with their flags.

    ``threshold`` is the noise check's correlation threshold (a residual autocorrelation above it at lag 1
    is flagged); ``noise_axes`` maps each axis the noise check flagged to its excess lag-1 correlation.
    """
    residuals = [r - d for r, d in zip(raw, denoised, strict=True)]
    autocorrelation = residual_autocorrelation(residuals, axes)
    bias = bias_per_bin(residuals, denoised)
    checkerboard = checkerboard_index(residuals)
    structure = detail_correlation(residuals, denoised)
    worst_bias = max((abs(m) / s for m, s in zip(bias["residual_mean"], bias["residual_std"], strict=True) if s > 0),
                     default=0.0)
    gone = stripes_gone(autocorrelation, noise_axes)
    return {
        "residual_std": float(np.sqrt(np.mean([r.var() for r in residuals]))),
        "bias": bias, "bias_max_relative": worst_bias,
        "residual_autocorrelation": autocorrelation,
        "checkerboard_index": checkerboard,
        "residual_detail_correlation": structure,
        "stripes_gone": gone,
        "flags": {"bias": worst_bias > BIAS_LIMIT,
                  "correlated_residual": [a for a in axes if autocorrelation[a][0] > threshold],
                  "checkerboard": checkerboard > CHECKERBOARD_LIMIT,
                  "residual_structure": structure > STRUCTURE_LIMIT,
                  "stripes_left": [a for a, ok in gone.items() if not ok]},
    }


def flagged(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the flags a channel's metrics raise."""
    return [name for name, value in metrics["flags"].items() if value]


def check_residual(raw_zarr: Path, denoised_zarr: Path, noise_json: Path, max_blocks: int, fraction: float,
                   threshold: float, seed: int) -> dict[str, Any]:
    """Residual diagnostics per channel on the blocks :func:`~n2vpipe.noise.blocks_to_sample` picks (a
    different draw from the noise check's: seed + 1), against the noise check's verdict in ``noise_json``."""
    raw, meta = open_ome_zarr(raw_zarr)
    denoised, _ = open_ome_zarr(denoised_zarr)
    noise = json.loads(Path(noise_json).read_text())
    count = blocks_to_sample(meta, max_blocks, fraction)
    channels = []
    for channel in range(meta.size("c")):
        keys = block_keys(meta, raw.chunks, channel, count, seed + 1)
        before = [read_region(raw, key).astype(np.float64) for key in keys]
        after = [stored_to_intensity(read_region(denoised, key).astype(np.float64), denoised_zarr, channel)
                 for key in keys]
        noise_channel = noise["channels"][channel]
        noise_axes = {a["axis"]: a["excess"][0] for a in noise_channel["axes"] if a["flagged"]}
        metrics = residual_metrics(before, after, meta.spatial_axes, threshold, noise_axes)
        channels.append({"channel": channel, **metrics, "flagged": flagged(metrics)})
    return {"raw": str(raw_zarr), "denoised": str(denoised_zarr), "blocks_per_channel": count,
            "limits": {"bias": BIAS_LIMIT, "checkerboard": CHECKERBOARD_LIMIT, "residual_structure": STRUCTURE_LIMIT,
                       "correlated_residual": threshold, "stripes_gone_share": STRIPES_GONE_SHARE},
            "channels": channels, "flagged": sorted({f for c in channels for f in c["flagged"]})}


def write_metrics(path: Path, metrics: Mapping[str, Any]) -> None:
    """Write ``metrics`` as JSON atomically and log its flags (a warning when any is raised)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, metrics)
    if metrics["flagged"]:
        log.warning("%s: residual diagnostics flag %s (see %s and docs/qc.md)", metrics["denoised"],
                    ", ".join(metrics["flagged"]), path)
    else:
        log.info("%s: residual diagnostics raise no flag", metrics["denoised"])


def metrics_flags(path: Path) -> list[str]:
    """The flags the residual diagnostics at ``path`` raise; none when there is no file yet."""
    try:
        return list(json.loads(Path(path).read_text())["flagged"])
    except FileNotFoundError:
        return []
