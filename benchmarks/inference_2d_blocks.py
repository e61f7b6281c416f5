"""Inference time of a large 2D image against the block side: which block suits 2D images?

Trains a throwaway 2D model (the weights do not matter for speed), then predicts one image with
square blocks of each side in turn, ``--rounds`` interleaved rounds in one process, and records
wall time, blocks and the share of computed pixels that are halo. Writes
results/<name>.json, .md and .png.

    python benchmarks/inference_2d_blocks.py [--size 3072] [--sides 192 384 768 1536] [--filters 32]
                                             [--precision float32] [--threads 2] [--rounds 2]
                                             [--name inference_2d_blocks]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from common import cpu_model, load_average, save_results
from n2vpipe.ingest import ingest_tiff
from n2vpipe.predict import PredictConfig, halo_on_grid, predict_volume
from n2vpipe.train import TrainConfig, train_n2v


def noisy_image(size: int, seed: int = 0) -> np.ndarray:
    """A ``size`` x ``size`` uint16 image: Poisson counts of a smooth pattern (speed does not depend on it)."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    signal = 60 + 40 * np.sin(y / 37) * np.cos(x / 23)
    return np.random.default_rng(seed).poisson(signal).astype(np.uint16)


def computed_share(size: int, side: int, halo: int) -> float:
    """Pixels the network computes over pixels in the image, for blocks of ``side`` with ``halo`` inside it."""
    starts = range(0, size, side)
    extent = sum(min(s + side + halo, size) - max(s - halo, 0) for s in starts)
    return (extent / size) ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3072, help="side of the square test image")
    parser.add_argument("--sides", type=int, nargs="+", default=[192, 384, 768, 1536])
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="inference_2d_blocks", help="results/<name>.json, .md, .png")
    args = parser.parse_args()
    times: dict[int, list[float]] = {side: [] for side in args.sides}
    blocks: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tifffile.imwrite(folder / "image.tif", noisy_image(args.size))
        ingest_tiff(folder / "image.tif", folder / "raw.ome.zarr", {"z": 1, "y": 256, "x": 256}, threads=args.threads)
        description = train_n2v(folder / "raw.ome.zarr", folder / "model", TrainConfig(
            patch={"z": 1, "y": 64, "x": 64}, batch_size=2, steps=2, base_filters=args.filters,
            validation_fraction=0, precision=args.precision), threads=args.threads)
        halo = halo_on_grid(description.spec)[0]
        load_before = load_average()
        for _ in range(args.rounds):
            for side in args.sides:
                started = time.perf_counter()
                config = PredictConfig(block_2d={"y": side, "x": side}, device="cpu", precision=args.precision,
                                       pyramid_levels=1)
                stats = predict_volume(folder / "raw.ome.zarr", folder / "model", folder / f"den-{side}.ome.zarr",
                                       config, threads=args.threads)
                times[side].append(time.perf_counter() - started)
                blocks[side] = stats.blocks
                (folder / f"den-{side}.ome.zarr").rename(folder / f"done-{side}-{len(times[side])}.ome.zarr")
        load_after = load_average()
    rows = [{"side": side, "blocks": blocks[side], "wall_s_runs": [round(t, 2) for t in times[side]],
             "wall_s": round(statistics.median(times[side]), 2),
             "megapixels_per_s": round(args.size ** 2 / statistics.median(times[side]) / 1e6, 3),
             "computed_share": round(computed_share(args.size, side, halo), 3)} for side in args.sides]
    machine = f"{cpu_model()}, {args.threads} threads"
    write_results(rows, machine, args, halo, (load_before, load_after))


def write_results(rows: list[dict], machine: str, args: argparse.Namespace, halo: int,
                  loads: tuple[list[float], list[float]]) -> None:
    """JSON, a markdown table and a plot under benchmarks/results/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fastest = min(rows, key=lambda r: r["wall_s"])
    lines = [f"# 2D inference against the block side ({machine})", "",
             f"One {args.size}x{args.size} image, U-Net depth 2, {args.filters} filters, {args.precision}, halo "
             f"{halo} px per side; {args.rounds} interleaved rounds in one process (median wall time). Load "
             f"averages before / after: {loads[0]} / {loads[1]}.", "",
             "| block side | blocks | computed / image pixels | wall s (runs) | M pixels/s | vs the fastest |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['blocks']} | {r['computed_share']:.2f} | {r['wall_s']} "
                     f"({', '.join(map(str, r['wall_s_runs']))}) | {r['megapixels_per_s']} | "
                     f"{fastest['wall_s'] / r['wall_s']:.2f}x |")
    png = save_results(args.name, machine, rows, lines)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["side"] for r in rows], [r["megapixels_per_s"] for r in rows], "o-")
    ax.set(xlabel="block side (px)", ylabel="M pixels/s", xscale="log", title=f"2D inference, {args.size}² image")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
