"""Quality-control pictures: the training curve and raw-versus-denoised views."""

from __future__ import annotations

import csv
import io
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


def middle_plane(array: zarr.Array, meta: ImageMeta, channel: int) -> np.ndarray:
    """The central Z plane (or the image itself in 2D) of one channel at the first time point; an
    undecodable chunk raises :class:`~n2vpipe.errors.InputError` naming the store, array and chunk key."""
    key = []
    for axis, size in zip(meta.axes, meta.shape, strict=True):
        if axis == "c":
            key.append(channel)
        elif axis == "t":
            key.append(0)
        elif axis == "z":
            key.append(size // 2)
        else:
            key.append(slice(None))
    return read_region(array, tuple(key)).astype(np.float32, copy=False)


def comparison_figure(raw_zarr: Path, denoised_zarr: Path, png: Path) -> None:
    """Raw and denoised central planes side by side per channel, with a shared contrast."""
    raw, raw_meta = open_ome_zarr(raw_zarr)
    denoised, den_meta = open_ome_zarr(denoised_zarr)
    channels = raw_meta.size("c")
    fig, axes = plt.subplots(channels, 2, figsize=(10, 5 * channels), dpi=100, squeeze=False)
    for channel in range(channels):
        before = middle_plane(raw, raw_meta, channel)
        after = stored_to_intensity(middle_plane(denoised, den_meta, channel), denoised_zarr, channel)
        low, high = np.percentile(after, [0.5, 99.8])
        for ax, image, title in ((axes[channel, 0], before, "raw"), (axes[channel, 1], after, "denoised")):
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(f"{title} (channel {channel}, central plane)")
            ax.axis("off")
    fig.suptitle(Path(denoised_zarr).parent.name)
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
