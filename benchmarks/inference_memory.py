"""Inference peak memory and throughput as the volume grows: does RSS stay flat?

Trains a throwaway model for a few steps (the weights do not matter for speed or memory),
then runs n2vpipe's tiled inference in a fresh process per volume size and records wall
time, voxels/s and peak RSS. Writes results/inference_memory.json, .md and .png.

    python benchmarks/inference_memory.py [--sizes 32x256x256 64x512x512] [--filters 32]

Block: the default of config/schema.yaml (predict.block).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml

from common import PRINT_PEAK_RSS_KIB, parse_shape, save_results
from n2vpipe.ingest import ingest_tiff
from n2vpipe.train import TrainConfig, train_n2v

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"
BLOCK = yaml.safe_load(SCHEMA.read_text())["properties"]["predict"]["properties"]["block"]["default"]
PREDICT = f"""
import sys
from n2vpipe.predict import predict_volume
stats = predict_volume(sys.argv[1], sys.argv[2], sys.argv[3], {BLOCK!r}, threads=int(sys.argv[4]))
print(stats.summary())
""" + PRINT_PEAK_RSS_KIB



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["32x256x256", "64x512x512"])
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for index, text in enumerate(args.sizes):
            shape = parse_shape(text)
            rng = np.random.default_rng(index)
            tifffile.imwrite(folder / f"{text}.tif", rng.poisson(100, size=shape).astype(np.uint16))
            raw = folder / f"{text}.ome.zarr"
            ingest_tiff(folder / f"{text}.tif", raw, BLOCK)
            if index == 0:
                train_n2v(raw, folder / "model", TrainConfig(steps=2, batch_size=2, base_filters=args.filters,
                                                             pooling=[[2, 2, 2], [2, 2, 2]]))
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PREDICT, str(raw), str(folder / "model"),
                                   str(folder / f"out-{text}.ome.zarr"), str(args.threads)],
                                  check=True, capture_output=True, text=True)
            wall = time.perf_counter() - start
            voxels = int(np.prod(shape))
            peak_mib = round(int(done.stdout.split()[-1]) / 1024)
            rows.append({"shape": list(shape), "voxels": voxels, "wall_s": round(wall, 1),
                         "voxels_per_s": round(voxels / wall), "peak_rss_MiB": peak_mib,
                         "n2vpipe_log": done.stdout.splitlines()[-2]})
            print(rows[-1], flush=True)
    machine = f"{platform.machine()}, {args.threads} threads; U-Net depth 2, {args.filters} filters, block {'x'.join(map(str, BLOCK.values()))}"
    write_results(rows, machine)


def write_results(rows: list[dict], machine: str) -> None:
    """JSON, a markdown table and a plot under benchmarks/results/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"# Inference memory and throughput vs volume size ({machine})", "",
             "| shape | voxels | wall s (incl. start-up) | voxels/s | peak RSS MiB |", "|---|---|---|---|---|"]
    lines += [f"| {'x'.join(map(str, r['shape']))} | {r['voxels']} | {r['wall_s']} | {r['voxels_per_s']} | "
              f"{r['peak_rss_MiB']} |" for r in rows]
    lines += ["", "Where the time went (n2vpipe's own log line per run):", ""]
    lines += [f"- {'x'.join(map(str, r['shape']))}: {r['n2vpipe_log'].split(': ', 1)[-1]}" for r in rows]
    png = save_results("inference_memory", machine, rows, lines)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r["voxels"] for r in rows], [r["peak_rss_MiB"] for r in rows], "o-")
    ax.set(xlabel="volume (voxels)", ylabel="peak RSS (MiB)", xscale="log", ylim=(0, None))
    ax.set_title("n2vpipe inference peak memory")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    main()
