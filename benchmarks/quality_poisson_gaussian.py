"""Denoising quality at a fixed CPU training budget, on synthetic 3D Poisson-Gaussian volumes.

One run = one synthetic volume (--shape, --photons, --seed) denoised by each chosen method in turn,
never two at once, each learned method in a fresh process:

* ``n2vpipe``: the noisy volume written as a float32 OME-Zarr with n2vpipe.io, ``train_n2v`` with
  one fixed TrainConfig for every volume (``N2VPIPE_DEFAULTS`` below, changed with
  ``--n2vpipe-set key=value``, values parsed as JSON where they parse; recorded in the JSON),
  ``max_minutes`` = --minutes and ``steps`` large enough that the wall budget ends training, then
  ``predict_volume`` (timed separately, OME-Zarr read and write included) and the float32 result
  read back. The cosine learning-rate schedule anneals over the wall budget (it follows whichever
  of ``steps`` and ``max_minutes`` is further along), so the model that finishes is settled.
* ``n2vpipe_n2v2``: the same with ``variant: n2v2`` (max-blur-pooling, no top skip, median replacement).
* ``n2vpipe_struct``: the same with a structN2V mask, a line along X of 2L - 1 voxels for read noise
  correlated over L voxels along X (--x-correlation L), so every correlated neighbour is hidden.
* ``careamics_n2v`` / ``careamics_n2v2``: CAREamics 0.3.5 in its own interpreter
  (--careamics-python, never imported here; see quality_careamics_worker.py): ``create_n2v_config``
  defaults (ZYX, patch 16x64x64, batch 8, N2V or N2V2), the same budget enforced by Lightning's
  ``max_time`` in the trainer parameters, then in-process tiled prediction (tile 32x128x128,
  overlap 8x32x32; the whole volume when it fits one tile) with the weights training ended with.
  One change to the defaults: CAREamics holds out 8 validation patches from a patch-sized grid and
  refuses volumes with 8 or fewer (32x128x128 has 8), so the worker holds out a tenth of the grid
  (1 to 8 patches), or validates on the training volume when it is a single patch. Its epoch is one
  pass over the remaining grid patches, so small volumes give batches smaller than 8.
* ``gaussian``: scipy.ndimage.gaussian_filter with the sigma from ``SIGMAS`` that scores best against
  the ground truth ("oracle sigma": an upper bound for this filter, not a usable method).
* ``bm4d``: the ``bm4d`` PyPI package in its own interpreter (--bm4d-python) on the generalised
  Anscombe transform of the data with the known gain and read noise (noise std 1 after it), mapped
  back with the closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2013). When
  the interpreter or the package is missing the row says why and has no PSNR.

Data: a structure map in [0, 1] (solid balls of three radii, thin random curved filaments, smoothed
slightly) over a background of ``BACKGROUND``; ``photons`` is the peak expected photon count. Noisy =
GAIN * Poisson(photons map) + Normal(0, READ_SIGMA); ground truth = GAIN * photons map, both in the
same intensity units. The default --photons gives an input PSNR of about 20.6 dB at 32x128x128.

PSNR = 10 log10(R^2 / MSE) against the ground truth with R = gt.max() - gt.min(), of each method's
raw output: no rescaling, offset or clipping is fitted for any method. Learned methods are limited
to --minutes of training wall clock each (train_s is the whole training call, set-up included;
predict_s is reported beside it, outside the budget). Load averages before and after each method are
recorded, as other users of the CPU slow the learned methods within their budget.

Writes results/<name>.json, .md and .png (PSNR bars per volume with the input PSNR dashed; central
Z slices of this run). With --append, rows of other (shape, photons) already in results/<name>.json
are kept, so several invocations build one table.

    python benchmarks/quality_poisson_gaussian.py [--shape 32x128x128] [--photons P] [--minutes 8]
        [--threads 2] [--methods n2vpipe,n2vpipe_n2v2,careamics_n2v,careamics_n2v2,gaussian,bm4d] [--seed 0]
        [--n2vpipe-set key=value ...] [--careamics-python /tmp/careamics-venv/bin/python]
        [--bm4d-python /tmp/bm4d-venv/bin/python] [--name quality_poisson_gaussian] [--append]

BM4D's interpreter: ``python3 -m venv /tmp/bm4d-venv && /tmp/bm4d-venv/bin/pip install bm4d``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common import (
    RESULTS,
    cpu_model,
    load_average,
    parse_setting,
    parse_shape,
    run_worker,
    save_results,
    schema_default,
    shape_text,
)
from n2vpipe.io import ImageMeta, blosc_compressor, create_ome_zarr

SRC = Path(__file__).resolve().parents[1] / "src"
CAREAMICS_WORKER = Path(__file__).with_name("quality_careamics_worker.py")
DEFAULT_CAREAMICS_PYTHON = "/tmp/careamics-venv/bin/python"
DEFAULT_BM4D_PYTHON = "/tmp/bm4d-venv/bin/python"
METHODS = ("n2vpipe", "n2vpipe_n2v2", "n2vpipe_struct", "careamics_n2v", "careamics_n2v2", "gaussian", "bm4d")
GAIN = 2.0
READ_SIGMA = 4.0
BACKGROUND = 0.1
DEFAULT_PHOTONS = 33.5
SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
CAREAMICS_PATCH = (16, 64, 64)
CAREAMICS_BATCH = 8
CAREAMICS_TILE = (32, 128, 128)
CAREAMICS_OVERLAP = (8, 32, 32)
N2VPIPE_DEFAULTS: dict[str, Any] = {
    "variant": "n2v", "patch": {"z": 16, "y": 64, "x": 64}, "batch_size": 8, "base_filters": 32, "depth": 2,
    "learning_rate": 4e-4, "lr_schedule": "cosine", "masked_fraction": 0.002, "validate_every": 10,
    "steps": 1_000_000, "device": "cpu",
}
"""n2vpipe's TrainConfig for every volume; --n2vpipe-set overrides keys, --minutes sets max_minutes."""

N2VPIPE = """
import json, sys, time
from pathlib import Path
import numpy as np
from n2vpipe.io import open_ome_zarr
from n2vpipe.predict import PredictConfig, predict_volume
from n2vpipe.train import TrainConfig, train_n2v

args = json.loads(sys.argv[1])
folder = Path(args["folder"])
start = time.perf_counter()
description = train_n2v(folder / "noisy.ome.zarr", folder / "n2vpipe-model", TrainConfig.from_mapping(args["config"]),
                        threads=args["threads"])
trained = time.perf_counter()
predict_volume(folder / "noisy.ome.zarr", folder / "n2vpipe-model", folder / "n2vpipe.ome.zarr",
               PredictConfig(block=args["block"], device="cpu", pyramid_levels=1), threads=args["threads"])
predicted = time.perf_counter()
array, _ = open_ome_zarr(folder / "n2vpipe.ome.zarr")
np.save(folder / "n2vpipe.npy", np.asarray(array[...], dtype=np.float32))
print("RESULT " + json.dumps({"train_s": trained - start, "predict_s": predicted - trained, **description.history}))
"""

BM4D = """
import json, sys, time
import numpy as np
import bm4d

args = json.loads(sys.argv[1])
start = time.perf_counter()
np.save(args["dst"], bm4d.bm4d(np.load(args["src"]), 1.0).astype(np.float32))
print("RESULT " + json.dumps({"denoise_s": time.perf_counter() - start}))
"""


def _add_balls(canvas: np.ndarray, rng: np.random.Generator, radius: float, count: int) -> None:
    """Paint ``count`` solid balls of ``radius`` voxels with random brightness in [0.4, 1] (maximum where they meet)."""
    reach = int(np.ceil(radius))
    for _ in range(count):
        centre = rng.uniform(0, canvas.shape)
        low = [max(0, int(c) - reach) for c in centre]
        high = [min(s, int(c) + reach + 2) for c, s in zip(centre, canvas.shape, strict=True)]
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(low, high, strict=True))]
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        box = canvas[tuple(slice(a, b) for a, b in zip(low, high, strict=True))]
        np.maximum(box, rng.uniform(0.4, 1.0) * inside, out=box)


def _add_filament(canvas: np.ndarray, rng: np.random.Generator, length: int) -> None:
    """Paint one thin curved filament: a path of half-voxel steps whose direction drifts randomly, mostly in YX."""
    drift = np.cumsum(rng.normal(0.0, 0.06, (2 * length, 3)), axis=0) + rng.normal(0.0, 1.0, 3)
    drift[:, 0] *= 0.3
    steps = 0.5 * drift / np.linalg.norm(drift, axis=1, keepdims=True)
    points = np.rint(rng.uniform(0, canvas.shape) + np.cumsum(steps, axis=0)).astype(int)
    inside = np.all((points >= 0) & (points < canvas.shape), axis=1)
    canvas[tuple(points[inside].T)] = rng.uniform(0.6, 1.0)


def make_structure(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Noise-free structure in [0, 1]: balls of radius 1.5, 3 and 6 voxels and curved filaments, smoothed slightly.

    Object counts scale with the volume (per 32x128x128: 120, 40 and 10 balls, 16 filaments).
    """
    rng = np.random.default_rng(seed)
    canvas = np.zeros(shape)
    scale = np.prod(shape) / (32 * 128 * 128)
    for radius, count in ((1.5, 120), (3.0, 40), (6.0, 10)):
        _add_balls(canvas, rng, radius, max(1, round(count * scale)))
    for _ in range(max(1, round(16 * scale))):
        _add_filament(canvas, rng, max(shape[1:]))
    smooth = ndimage.gaussian_filter(canvas, 0.7)
    return smooth / smooth.max()


def read_noise(shape: tuple[int, int, int], x_correlation: int, rng: np.random.Generator) -> np.ndarray:
    """Normal(0, READ_SIGMA) per voxel; with ``x_correlation`` L > 1, a moving average of L voxels along X,
    rescaled to the same std: row-correlated camera noise, which leaves stripes along X."""
    white = rng.normal(0.0, READ_SIGMA, shape)
    if x_correlation <= 1:
        return white
    return ndimage.uniform_filter1d(white, x_correlation, axis=2, mode="wrap") * np.sqrt(x_correlation)


def make_volume(shape: tuple[int, int, int], photons: float, seed: int,
                x_correlation: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, noisy) in intensity units, float32: GAIN * Poisson(photon map) + read noise
    (see :func:`read_noise`)."""
    expected = photons * (BACKGROUND + (1 - BACKGROUND) * make_structure(shape, seed))
    rng = np.random.default_rng(seed + 1)
    noisy = GAIN * rng.poisson(expected) + read_noise(shape, x_correlation, rng)
    return (GAIN * expected).astype(np.float32), noisy.astype(np.float32)


def lag_correlation(residual: np.ndarray, axis: int) -> float:
    """Correlation coefficient of the residual with itself one voxel further along ``axis`` (stripes along X
    show as a high X correlation)."""
    centred = residual.astype(np.float64) - residual.mean()
    ahead = np.take(centred, range(1, centred.shape[axis]), axis=axis)
    behind = np.take(centred, range(centred.shape[axis] - 1), axis=axis)
    return float((ahead * behind).mean() / centred.var())


def nyquist_excess(residual: np.ndarray) -> float:
    """Checkerboard measure: mean power of the residual's per-plane YX spectrum on its Nyquist row and column
    (|f| = 1/2 along Y or X) over its mean power. A white residual gives about 1, a checkerboard far more."""
    planes = residual.astype(np.float64) - residual.mean(axis=(1, 2), keepdims=True)
    spectrum = np.abs(np.fft.fft2(planes)) ** 2
    ny, nx = residual.shape[1] // 2, residual.shape[2] // 2
    return float(np.concatenate([spectrum[:, ny, :].ravel(), spectrum[:, :, nx].ravel()]).mean() / spectrum.mean())


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, with the ground truth's range (max - min) as the peak."""
    mse = float(np.mean((estimate.astype(np.float64) - truth) ** 2))
    return float(10 * np.log10(float(truth.max() - truth.min()) ** 2 / mse))


def generalised_anscombe(z: np.ndarray, gain: float, sigma: float) -> np.ndarray:
    """GAT of ``z = gain * Poisson + Normal(0, sigma)``: 2 sqrt(z / gain + 3/8 + (sigma / gain)^2), 0 where negative.

    Afterwards the noise is close to Gaussian with unit variance.
    """
    return 2 * np.sqrt(np.maximum(z / gain + 3 / 8 + (sigma / gain) ** 2, 0.0))


def inverse_generalised_anscombe(d: np.ndarray, gain: float, sigma: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of the GAT (Makitalo & Foi 2013), in intensity units.

    In photons (unit gain, read noise s = sigma / gain):
    I(D) = D^2/4 + sqrt(3/2)/(4 D) - 11/(8 D^2) + 5 sqrt(3/2)/(8 D^3) - 1/8 - s^2, clipped at 0.
    D is floored at 2 sqrt(3/8), the transform of zero photons without read noise, where the s = 0
    expression is 0; below it the negative powers of D make the expansion meaningless.
    """
    d = np.maximum(d.astype(np.float64), 2 * np.sqrt(3 / 8))
    root = np.sqrt(1.5)
    photons = d**2 / 4 + root / (4 * d) - 11 / (8 * d**2) + 5 * root / (8 * d**3) - 1 / 8 - (sigma / gain) ** 2
    return gain * np.maximum(photons, 0.0)


def run_n2vpipe(folder: Path, noisy: np.ndarray, config: dict[str, Any],
                threads: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Write the OME-Zarr, train and predict in a fresh process; return the denoised volume and the row facts."""
    meta = ImageMeta("zyx", noisy.shape, "float32", (1.0, 1.0, 1.0))
    array = create_ome_zarr(folder / "noisy.ome.zarr", meta, (32, 128, 128), blosc_compressor("zstd", 5), "noisy")
    array[...] = noisy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    job = {"folder": str(folder), "config": config, "threads": threads, "block": schema_default("predict", "block")}
    result = run_worker([sys.executable, "-c", N2VPIPE, json.dumps(job)], env)
    notes = (f"stopped by {result['stopped_by']}; weights of step {result['best_step']} (lowest validation loss) "
             "of " if result["best_step"] is not None else f"stopped by {result['stopped_by']}; last weights of ")
    return np.load(folder / "n2vpipe.npy"), {
        "train_s": result["train_s"], "predict_s": result["predict_s"], "steps": result["steps_done"],
        "notes": notes + f"{result['steps_done']} steps; predict_volume incl. OME-Zarr I/O", "config": config}


def run_careamics(folder: Path, noisy: np.ndarray, args: argparse.Namespace,
                  n2v2: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Train and predict with CAREamics in its own interpreter; return the denoised volume and the row facts."""
    np.save(folder / "noisy.npy", noisy)
    whole = all(s <= t for s, t in zip(noisy.shape, CAREAMICS_TILE, strict=True))
    dst = folder / f"careamics-{'n2v2' if n2v2 else 'n2v'}.npy"
    job = {"src": str(folder / "noisy.npy"), "dst": str(dst), "work_dir": str(folder / dst.stem),
           "n2v2": n2v2, "seconds": 60 * args.minutes, "threads": args.threads, "patch": list(CAREAMICS_PATCH),
           "batch": CAREAMICS_BATCH, "tile": None if whole else list(CAREAMICS_TILE),
           "overlap": None if whole else list(CAREAMICS_OVERLAP)}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run_worker([args.careamics_python, str(CAREAMICS_WORKER), json.dumps(job)], env)
    tiling = "whole volume" if whole else f"tiles {CAREAMICS_TILE}, overlap {CAREAMICS_OVERLAP}"
    notes = (f"CAREamics {result['careamics']} (torch {result['torch']}), max_time {job['seconds']:.0f} s; "
             f"{result['steps']} steps in {result['epochs']} epochs, {result['validation']}, last weights; "
             f"{result['dataloader_workers']} "
             f"DataLoader workers; prediction in memory, {tiling}")
    return np.load(dst), {"train_s": result["train_s"], "predict_s": result["predict_s"], "steps": result["steps"],
                          "epochs": result["epochs"], "notes": notes}


def run_gaussian(noisy: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Gaussian filter with the sigma of ``SIGMAS`` closest to the ground truth (an oracle choice)."""
    start = time.perf_counter()
    scores = {sigma: psnr(ndimage.gaussian_filter(noisy, sigma), truth) for sigma in SIGMAS}
    sigma = max(scores, key=scores.get)
    best = ndimage.gaussian_filter(noisy, sigma)
    return best, {"train_s": None, "predict_s": time.perf_counter() - start, "steps": None, "sigma": sigma,
                  "notes": f"oracle sigma {sigma} (best of {list(SIGMAS)} against the ground truth); "
                           "predict_s covers the whole grid"}


def bm4d_problem(python: str) -> str | None:
    """Why BM4D cannot run with ``python`` (missing interpreter or package), or None when it can."""
    if not Path(python).exists():
        return f"no interpreter at {python}"
    done = subprocess.run([python, "-c", "import bm4d"], capture_output=True, text=True, check=False)
    return (done.stderr.strip().splitlines() or ["import bm4d failed"])[-1] if done.returncode else None


def run_bm4d(folder: Path, noisy: np.ndarray, python: str) -> tuple[np.ndarray | None, dict[str, Any]]:
    """GAT, BM4D with unit noise std in its own interpreter, closed-form unbiased inverse."""
    problem = bm4d_problem(python)
    if problem:
        return None, {"train_s": None, "predict_s": None, "steps": None, "notes": f"bm4d unavailable: {problem}"}
    start = time.perf_counter()
    np.save(folder / "gat.npy", generalised_anscombe(noisy, GAIN, READ_SIGMA).astype(np.float32))
    result = run_worker([python, "-c", BM4D, json.dumps({"src": str(folder / "gat.npy"),
                                                         "dst": str(folder / "bm4d.npy")})])
    denoised = inverse_generalised_anscombe(np.load(folder / "bm4d.npy"), GAIN, READ_SIGMA)
    return denoised, {"train_s": None, "predict_s": time.perf_counter() - start, "steps": None,
                      "notes": f"bm4d(GAT(z), sigma_psd=1), profile 'np', closed-form unbiased inverse; "
                               f"BM4D itself {result['denoise_s']:.1f} s; predict_s incl. interpreter start"}


def run_method(method: str, folder: Path, truth: np.ndarray, noisy: np.ndarray,
               args: argparse.Namespace) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Denoise ``noisy`` with one method; return its output (None when it cannot run) and its row facts."""
    if method == "n2vpipe":
        return run_n2vpipe(folder, noisy, args.n2vpipe_config, args.threads)
    if method == "n2vpipe_n2v2":
        return run_n2vpipe(folder, noisy, {**args.n2vpipe_config, "variant": "n2v2"}, args.threads)
    if method == "n2vpipe_struct":
        line = [[1] * (2 * args.x_correlation - 1)]  # hides every neighbour the noise correlates with
        return run_n2vpipe(folder, noisy, {**args.n2vpipe_config, "struct_mask": line}, args.threads)
    if method in ("careamics_n2v", "careamics_n2v2"):
        return run_careamics(folder, noisy, args, n2v2=method.endswith("n2v2"))
    if method == "gaussian":
        return run_gaussian(noisy, truth)
    return run_bm4d(folder, noisy, args.bm4d_python)


def parse_methods(text: str) -> list[str]:
    """Comma-separated method names, each one of ``METHODS``."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return methods


def parse_args() -> argparse.Namespace:
    """Command line; adds ``n2vpipe_config`` (the TrainConfig mapping n2vpipe will use)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=parse_shape, default=(32, 128, 128), help="volume, ZxYxX")
    parser.add_argument("--photons", type=float, default=DEFAULT_PHOTONS, help="peak expected photon count")
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget per learned method")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the learned methods")
    parser.add_argument("--methods", type=parse_methods, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--x-correlation", type=int, default=1,
                        help="read noise averaged over this many voxels along X (1: white)")
    parser.add_argument("--n2vpipe-set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="override one n2vpipe TrainConfig setting (value as JSON when it parses)")
    parser.add_argument("--careamics-python", default=DEFAULT_CAREAMICS_PYTHON)
    parser.add_argument("--bm4d-python", default=DEFAULT_BM4D_PYTHON)
    parser.add_argument("--name", default="quality_poisson_gaussian", help="results/<name>.json, .md, .png")
    parser.add_argument("--append", action="store_true", help="keep rows of other volumes in results/<name>.json")
    args = parser.parse_args()
    args.n2vpipe_config = {**N2VPIPE_DEFAULTS, **dict(args.n2vpipe_set), "max_minutes": args.minutes}
    return args


def volume_key(row: dict[str, Any]) -> tuple[str, float, int]:
    """What tells volumes apart: shape, photons and the X correlation of the read noise."""
    return row["shape"], row["photons"], row.get("x_correlation", 1)


def merge_rows(name: str, rows: list[dict[str, Any]], append: bool) -> list[dict[str, Any]]:
    """With ``append``, the rows already in results/<name>.json whose (shape, photons, method) this run did not
    redo, followed by this run's rows; otherwise this run's rows."""
    path = RESULTS / f"{name}.json"
    if not append or not path.exists():
        return rows
    redone = {(*volume_key(r), r["method"]) for r in rows}
    kept = [r for r in json.loads(path.read_text())["rows"] if (*volume_key(r), r["method"]) not in redone]
    return kept + rows


def seconds(value: float | None) -> str:
    """A time for the table, or a dash."""
    return "-" if value is None else f"{value:.1f}"


def markdown(rows: list[dict[str, Any]], machine: str) -> list[str]:
    """The results page: machine, definitions, one table row per (volume, method)."""
    lines = ["# Denoising quality at a fixed training budget: synthetic Poisson-Gaussian 3D volumes", "",
             f"Machine: {machine}.", "",
             (f"Noisy = {GAIN:g} x Poisson(photons) + Normal(0, {READ_SIGMA:g}); background {BACKGROUND:g} of the "
              "peak photon count. PSNR against the ground truth, peak = gt.max() - gt.min(), of each method's raw "
              "output (nothing fitted). train_s: training wall clock (budget per learned method); predict_s: "
              "inference wall clock. Nyquist excess: mean power of the residual (output - ground truth) on the "
              "Nyquist row and column of each Z plane's YX spectrum over its mean power (checkerboard artefacts "
              "raise it; a white residual gives about 1). Load averages (1/5/15 min) before and after each "
              "method."), "",
             ("Read noise X-correlated over L voxels (L > 1): a moving average along X, the same std; residual "
              "lag-1 correlation along X and Y tells stripes apart (plain N2V keeps X-correlated noise)."), "",
             ("| volume | photons | X corr. L | budget min | input PSNR dB | method | PSNR dB | gain dB | "
              "Nyquist excess | residual lag-1 corr. X / Y | train s | predict s | steps | load before | load after "
              "| notes |"), "|---" * 16 + "|"]
    for r in rows:
        score = "-" if r["psnr"] is None else f"{r['psnr']:.2f}"
        gain = "-" if r["psnr"] is None else f"{r['psnr'] - r['input_psnr']:+.2f}"
        nyquist = "-" if r.get("nyquist_excess") is None else f"{r['nyquist_excess']:.2f}"
        lag = ("-" if r.get("residual_lag1_corr_x") is None
               else f"{r['residual_lag1_corr_x']:.2f} / {r['residual_lag1_corr_y']:.2f}")
        cells = [r["shape"], f"{r['photons']:g}", r.get("x_correlation", 1), f"{r['minutes']:g}",
                 f"{r['input_psnr']:.2f}", r["method"], score, gain, nyquist, lag, seconds(r["train_s"]),
                 seconds(r["predict_s"]), "-" if r["steps"] is None else r["steps"],
                 " ".join(map(str, r["load_before"])), " ".join(map(str, r["load_after"])), r["notes"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    config = next((r["config"] for r in reversed(rows) if r["method"] == "n2vpipe"), None)
    if config:
        lines += ["", f"n2vpipe TrainConfig (latest n2vpipe row; n2vpipe_n2v2 sets variant n2v2, n2vpipe_struct a "
                      f"struct_mask): `{json.dumps(config)}`"]
    return lines


def plot(rows: list[dict[str, Any]], slices: dict[str, np.ndarray], caption: str, png: Path) -> None:
    """PSNR bars per volume (input PSNR dashed) above the central Z slices of this run (``caption``:
    its volume), ground truth first, all on its grey scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = list(dict.fromkeys(volume_key(r) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = plt.figure(figsize=(max(8, 2.2 * len(slices)), 8))
    grid = fig.add_gridspec(2, len(slices), height_ratios=[1.2, 1])
    bars = fig.add_subplot(grid[0, :])
    width = 0.8 / len(methods)
    colours = plt.get_cmap("tab10")
    labelled = set()
    for v, volume in enumerate(volumes):
        mine = {r["method"]: r for r in rows if volume_key(r) == volume}
        for m, method in enumerate(methods):
            row = mine.get(method)
            if row is not None and row["psnr"] is not None:
                bars.bar(v + (m - (len(methods) - 1) / 2) * width, row["psnr"], width, color=colours(m),
                         label=None if method in labelled else method)
                labelled.add(method)
        bars.hlines(next(iter(mine.values()))["input_psnr"], v - 0.45, v + 0.45, colors="k", linestyles="dashed",
                    label="input PSNR" if v == 0 else None)
    bars.set_xticks(range(len(volumes)), [f"{shape} @ {photons:g} photons" + (f", X-corr. {corr}" if corr > 1 else "")
                                          for shape, photons, corr in volumes])
    bars.set(ylabel="PSNR dB", title="PSNR against ground truth (dashed: noisy input)")
    bars.legend(fontsize=8, ncol=3)
    truth = next(iter(slices.values()))
    for index, (title, image) in enumerate(slices.items()):
        axis = fig.add_subplot(grid[1, index])
        axis.imshow(image, cmap="gray", vmin=truth.min(), vmax=truth.max())
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    fig.text(0.5, 0.02, f"central Z slices, {caption}", ha="center")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> None:
    """Make the volume, run every method in turn, write the results."""
    args = parse_args()
    truth, noisy = make_volume(args.shape, args.photons, args.seed, args.x_correlation)
    input_psnr = psnr(noisy, truth)
    shape = shape_text(args.shape)
    print(f"{shape} @ {args.photons:g} photons (seed {args.seed}): input PSNR {input_psnr:.2f} dB", flush=True)
    middle = args.shape[0] // 2
    slices = {f"ground truth, z {middle}": truth[middle], f"noisy {input_psnr:.1f} dB": noisy[middle]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="qbench-") as tmp:
        for method in args.methods:
            folder = Path(tmp) / method
            folder.mkdir()
            before = load_average()
            denoised, facts = run_method(method, folder, truth, noisy, args)
            score = None if denoised is None else psnr(denoised, truth)
            residual = None if denoised is None else denoised - truth
            checkerboard = None if residual is None else nyquist_excess(residual)
            lag = {} if residual is None else {"residual_lag1_corr_x": lag_correlation(residual, 2),
                                                "residual_lag1_corr_y": lag_correlation(residual, 1)}
            rows.append({"shape": shape, "photons": args.photons, "seed": args.seed, "gain": GAIN,
                         "read_sigma": READ_SIGMA, "minutes": args.minutes, "threads": args.threads,
                         "input_psnr": input_psnr, "method": method, "psnr": score,
                         "nyquist_excess": checkerboard, **lag, "x_correlation": args.x_correlation,
                         "load_before": before,
                         "load_after": load_average(), **facts})
            if denoised is not None:
                slices[f"{method} {score:.1f} dB"] = denoised[middle]
            print(f"{method}: PSNR {'-' if score is None else f'{score:.2f}'} dB; train {seconds(facts['train_s'])} s, "
                  f"predict {seconds(facts['predict_s'])} s; {facts['notes']}; load {before} -> "
                  f"{rows[-1]['load_after']}", flush=True)
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    all_rows = merge_rows(args.name, rows, args.append)
    png = save_results(args.name, machine, all_rows, markdown(all_rows, machine))
    plot(all_rows, slices, f"{shape} @ {args.photons:g} photons, seed {args.seed}", png)


if __name__ == "__main__":
    main()
