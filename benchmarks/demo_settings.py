"""Which training settings give the demo its sharpest result in its step budget.

The demo (config/demo.yaml) trains 120 steps of batch 4 on 16x64x64 patches with 16 filters. This
runs that budget with a few settings on a synthetic volume like the demo's lattice light-sheet crop
(48x192x192, small bright spots of 1-2 voxels on a dim background, Poisson plus read noise) and
reports PSNR against the clean volume and seconds per step, all in one process one after another.

    python benchmarks/demo_settings.py [--steps 120] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from scipy import ndimage  # noqa: E402

from common import cpu_model, load_average, save_results  # noqa: E402
from n2vpipe.ingest import ingest_tiff  # noqa: E402
from n2vpipe.io import open_ome_zarr  # noqa: E402
from n2vpipe.predict import PredictConfig, predict_volume  # noqa: E402
from n2vpipe.train import TrainConfig, train_n2v  # noqa: E402
from quality_poisson_gaussian import psnr  # noqa: E402

SHAPE = (48, 192, 192)
DEMO = {"patch": {"z": 16, "y": 64, "x": 64}, "batch_size": 4, "base_filters": 16, "validate_every": 20,
        "checkpoint_every": 50}
VARIANTS: dict[str, dict[str, Any]] = {
    "demo before (BatchNorm, 0.2 % masked, lr 4e-4)": {"batch_norm": True},
    "BatchNorm, 2 % masked, lr 1e-3": {"batch_norm": True, "masked_fraction": 0.02, "learning_rate": 1e-3},
    "no BatchNorm, 2 % masked, lr 1e-3": {"batch_norm": False, "masked_fraction": 0.02, "learning_rate": 1e-3},
    "no BatchNorm, 2 % masked, lr 2e-3": {"batch_norm": False, "masked_fraction": 0.02, "learning_rate": 2e-3},
}


def spots_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy uint16): 600 spots of sigma 1.2 voxels, peak about 60 photons over a background of 8."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros(SHAPE, np.float32)
    canvas[tuple(rng.integers(0, s, 600) for s in SHAPE)] = rng.uniform(0.3, 1.0, 600)
    spots = ndimage.gaussian_filter(canvas, 1.2)
    clean = 8 + 60 * spots / spots.max()
    noisy = rng.poisson(clean) + rng.normal(0, 3, SHAPE) + 100
    return clean.astype(np.float32), np.clip(np.round(noisy), 0, 65535).astype(np.uint16)


def run_variant(raw: Path, work: Path, clean: np.ndarray, settings: dict[str, Any], steps: int,
                threads: int) -> dict[str, Any]:
    """Train and predict with ``settings``; PSNR of the result and the training time per step."""
    config = TrainConfig(**DEMO, **settings, steps=steps)
    start = time.perf_counter()
    description = train_n2v(raw, work / "model", config, threads=threads)
    seconds = time.perf_counter() - start
    predict_volume(raw, work / "model", work / "denoised.ome.zarr", PredictConfig(block={"z": 32, "y": 128, "x": 128}),
                   threads=threads)
    array, _ = open_ome_zarr(work / "denoised.ome.zarr")
    denoised = np.squeeze(np.asarray(array[...], np.float64)) - 100
    return {"psnr_db": round(psnr(denoised, clean), 2), "s_per_step": round(seconds / steps, 3),
            "best_step": description.history.get("best_step"), "steps": steps}


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    """PSNR per variant as horizontal bars."""
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.barh([r["variant"] for r in rows], [r["psnr_db"] for r in rows])
    ax.set_xlabel("PSNR (dB)")
    ax.set_xlim(min(r["psnr_db"] for r in rows) - 2, max(r["psnr_db"] for r in rows) + 1)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(png)


def main() -> None:
    """Run every variant and write results/demo_settings.*."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    clean, noisy = spots_volume()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tifffile.imwrite(Path(folder) / "spots.tif", noisy, imagej=True, metadata={"axes": "ZYX"})
        raw = Path(folder) / "raw.ome.zarr"
        ingest_tiff(Path(folder) / "spots.tif", raw, {"z": 32, "y": 128, "x": 128})
        input_psnr = round(psnr(noisy.astype(np.float64) - 100, clean), 2)
        for index, (name, settings) in enumerate(VARIANTS.items()):
            result = run_variant(raw, Path(folder) / str(index), clean, settings, args.steps, args.threads)
            rows.append({"variant": name, **result})
            print(rows[-1], flush=True)
    machine = f"{cpu_model()}, {args.threads} threads, load {load_average()} at the end"
    table = [f"Demo budget ({args.steps} steps, batch 4, 16x64x64, 16 filters) on a {SHAPE} spots volume "
             f"(input {input_psnr} dB); {machine}.", "",
             "| settings | PSNR | s/step | best step |", "|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['psnr_db']} dB | {r['s_per_step']} | {r['best_step']} |" for r in rows]
    plot(rows, save_results("demo_settings", machine, rows, table))


if __name__ == "__main__":
    main()
