"""Quality-control pictures: the training curve, raw-versus-denoised views and the noise check."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402

from n2vpipe.io import ImageMeta, open_ome_zarr, read_region, write_bytes_atomic  # noqa: E402
from n2vpipe.metrics import stored_to_intensity  # noqa: E402


def save_figure(fig: plt.Figure, png: Path) -> None:
    """Write ``fig`` to ``png`` atomically and close it (a full disk raises
    :class:`~n2vpipe.errors.DiskFullError` naming ``png`` and leaves no partial picture)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(png, buffer.getvalue())


def plot_training_log(log_csv: Path, png: Path, title: str) -> None:
    """Training and validation loss against step, on a log scale."""
    with open(log_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, [float(r["train_loss"]) for r in rows], label="training (masked pixels)")
    val = [float(r["val_loss"]) for r in rows]
    if not all(np.isnan(val)):
        ax.plot(steps, val, label="validation (disjoint region)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"Noise2Void training: {title}")
    fig.tight_layout()
    save_figure(fig, png)


VIEWS = {"XY": ("y", "x"), "XZ": ("z", "x"), "YZ": ("z", "y")}
"""Each view's (row axis, column axis); a view through the centre fixes the remaining spatial axis."""
CROP = 64
"""Edge (pixels) of the zoom crop from the centre of the XY view (drawn without interpolation)."""


def central_view(array: zarr.Array, meta: ImageMeta, channel: int, view: str) -> np.ndarray:
    """The ``view`` (XY, XZ or YZ) plane through the centre of one channel at the first time point; an
    undecodable chunk raises :class:`~n2vpipe.errors.InputError` naming the store, array and chunk key."""
    key = []
    for axis, size in zip(meta.axes, meta.shape, strict=True):
        if axis == "c":
            key.append(channel)
        elif axis == "t":
            key.append(0)
        elif axis in VIEWS[view]:
            key.append(slice(None))
        else:
            key.append(size // 2)
    return read_region(array, tuple(key)).astype(np.float32, copy=False)


def views_of(meta: ImageMeta) -> list[str]:
    """The views an image has: XY, XZ and YZ in 3D, XY alone in 2D."""
    return list(VIEWS) if "z" in meta.spatial_axes else ["XY"]


def view_aspect(meta: ImageMeta, view: str) -> float:
    """Height over width of one pixel of ``view`` on screen: the voxel size along its rows over its columns."""
    scale = dict(zip(meta.spatial_axes, meta.spatial_scale, strict=True))
    rows, columns = VIEWS[view]
    return scale[rows] / scale[columns]


def centre_crop(plane: np.ndarray, edge: int = CROP) -> np.ndarray:
    """The central ``edge`` x ``edge`` pixels of ``plane`` (all of it along a shorter side)."""
    starts = [max(0, (n - edge) // 2) for n in plane.shape]
    return plane[starts[0]:starts[0] + edge, starts[1]:starts[1] + edge]


def qc_numbers(noise: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """The noise check's and the residual diagnostics' numbers per channel, as lines for a figure's title."""
    lines = [noise["verdict"]["message"].split("\n")[0].split(";")[0]]
    for noisy, residual in zip(noise["channels"], metrics["channels"], strict=True):
        flags = ", ".join(residual["flagged"]) or "none"
        lines.append(f"channel {noisy['channel']}: noise std {noisy['level']['std_at_median']:.3g} at median intensity"
                     f" (variance {noisy['level']['gain']:.3g} x intensity + {noisy['level']['offset']:.3g}); "
                     f"residual checkerboard index {residual['checkerboard_index']:.2f}, detail correlation "
                     f"{residual['residual_detail_correlation']:.2f}, largest bias {residual['bias_max_relative']:.2f} "
                     f"std; flags: {flags}")
    return "\n".join(textwrap.fill(line, 150) for line in lines)


def _show(ax: plt.Axes, image: np.ndarray, title: str, aspect: float, **style: Any) -> None:
    """One image panel without ticks."""
    ax.imshow(image, aspect=aspect, interpolation="nearest", **style)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def comparison_figure(raw_zarr: Path, denoised_zarr: Path, noise_json: Path, metrics_json: Path, png: Path) -> None:
    """Per channel: raw, denoised and residual (raw - denoised) through the centre in XY, XZ and YZ with the
    voxel aspect kept, a zoom crop pixel for pixel, and histograms; the QC numbers on top."""
    raw, raw_meta = open_ome_zarr(raw_zarr)
    denoised, den_meta = open_ome_zarr(denoised_zarr)
    views = views_of(raw_meta)
    channels = raw_meta.size("c")
    fig, axes = plt.subplots(3 * channels, len(views) + 1, figsize=(4.5 * (len(views) + 1), 12 * channels),
                             dpi=100, squeeze=False)
    for channel in range(channels):
        rows = axes[3 * channel:3 * channel + 3]
        before = {v: central_view(raw, raw_meta, channel, v) for v in views}
        after = {v: stored_to_intensity(central_view(denoised, den_meta, channel, v), denoised_zarr, channel)
                 for v in views}
        low, high = np.percentile(after["XY"], [0.5, 99.8])
        spread = float(np.percentile(np.abs(before["XY"] - after["XY"]), 99)) or 1.0
        for column, view in enumerate(views):
            aspect = view_aspect(raw_meta, view)
            _show(rows[0, column], before[view], f"raw {view} (channel {channel})", aspect, cmap="gray",
                  vmin=low, vmax=high)
            _show(rows[1, column], after[view], f"denoised {view}", aspect, cmap="gray", vmin=low, vmax=high)
            _show(rows[2, column], before[view] - after[view], f"residual {view} (raw - denoised)", aspect,
                  cmap="RdBu_r", vmin=-spread, vmax=spread)
        _show(rows[0, -1], centre_crop(before["XY"]), f"raw XY centre {CROP} x {CROP} px, zoomed", 1.0,
              cmap="gray", vmin=low, vmax=high)
        _show(rows[1, -1], centre_crop(after["XY"]), f"denoised XY centre {CROP} x {CROP} px, zoomed", 1.0,
              cmap="gray", vmin=low, vmax=high)
        histogram = rows[2, -1]
        values = {name: np.concatenate([p.ravel() for p in planes.values()])
                  for name, planes in (("raw", before), ("denoised", after))}
        bins = np.linspace(*np.percentile(values["raw"], [0.1, 99.9]), 100)
        for name, data in values.items():
            histogram.hist(data, bins=bins, histtype="step", label=name)
        histogram.set_yscale("log")
        histogram.set_xlabel("intensity")
        histogram.set_title("histogram of the views", fontsize=10)
        histogram.legend()
    noise = json.loads(Path(noise_json).read_text())
    metrics = json.loads(Path(metrics_json).read_text())
    fig.suptitle(f"{Path(denoised_zarr).parent.name}\n{qc_numbers(noise, metrics)}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, png)


def noise_figure(report: Mapping[str, Any], png: Path) -> None:
    """The noise check (:func:`n2vpipe.noise.check_noise`) as a picture: excess autocorrelation against lag per
    axis with the threshold, noise variance against intensity with the Poisson-Gaussian fit, the verdict on top."""
    threshold = report["settings"]["correlation_threshold"]
    fig, (corr_ax, level_ax) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=100)
    for channel in report["channels"]:
        for axis in channel["axes"]:
            lags = range(1, len(axis["excess"]) + 1)
            label = f"{axis['axis'].upper()} (channel {channel['channel']})"
            corr_ax.plot(lags, axis["excess"], marker="o", label=label)
        level = channel["level"]
        level_ax.plot(level["bin_mean"], level["bin_variance"], "o", label=f"channel {channel['channel']}")
        means = np.array(level["bin_mean"])
        level_ax.plot(means, level["gain"] * means + level["offset"], "-",
                      label=f"{level['gain']:.3g} x intensity + {level['offset']:.3g}")
    corr_ax.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold}")
    corr_ax.set_xlabel("lag (voxels)")
    corr_ax.set_ylabel("noise autocorrelation above white noise")
    corr_ax.legend(fontsize=8)
    level_ax.set_xlabel("intensity (blurred)")
    level_ax.set_ylabel("noise variance")
    level_ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(report["verdict"]["message"].split("\n")[0], 140), fontsize=9)
    fig.tight_layout()
    save_figure(fig, png)
