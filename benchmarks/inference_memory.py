"""Inference peak memory and throughput as the volume grows: does RSS stay flat?

Trains a throwaway model per filter count for a few steps (the weights do not matter for
speed or memory), then runs n2vpipe's tiled inference in a fresh process per run and records
wall time, voxels/s and peak RSS (the worker's VmHWM). Writes results/inference_memory.json,
.md and .png.

    python benchmarks/inference_memory.py [--runs 192x576x576:8 384x1152x1152:8 192x576x576:32:float32 ...]

Each run is ``SHAPE:FILTERS[:PRECISION]`` (precision ``auto`` unless given: bfloat16 on CPUs with
AMX, float32 elsewhere). Block: the default of config/schema.yaml (predict.block). A
block's input is the block plus the halo on the sides where the volume goes on, so memory is
set by a block inside the volume: the default runs use volumes of at least three blocks per
axis, so both sizes of a pair hold such blocks. The 8× pair uses 8 filters to run in minutes
on a CPU; the 32-filter runs check the default block stays under 2 GiB at the project's
usual width, in float32 (the most memory) and in the default precision.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import PRINT_PEAK_RSS_KIB, cpu_model, parse_shape, save_results, schema_default
from n2vpipe.device import arithmetic_name, autocast_dtype
from n2vpipe.ingest import ingest_tiff
from n2vpipe.train import TrainConfig, train_n2v

BLOCK = schema_default("predict", "block")
PREDICT = f"""
import sys
from n2vpipe.predict import PredictConfig, predict_volume
config = PredictConfig(block={BLOCK!r}, precision=sys.argv[5], pyramid_levels=1)
stats = predict_volume(sys.argv[1], sys.argv[2], sys.argv[3], config, threads=int(sys.argv[4]))
print(stats.summary())
""" + PRINT_PEAK_RSS_KIB



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["192x576x576:8", "384x1152x1152:8", "192x576x576:32:float32",
                                                       "192x576x576:32"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for index, run in enumerate(args.runs):
            text, filters, precision = (run + ":auto").split(":")[:3]
            rows.append(measure(folder, parse_shape(text), int(filters), precision, args.threads, seed=index))
            print(rows[-1], flush=True)
    machine = (f"{cpu_model()}, {args.threads} threads; U-Net depth 2, "
               f"block {'x'.join(map(str, BLOCK.values()))}")
    write_results(rows, machine)


def measure(folder: Path, shape: tuple[int, int, int], filters: int, precision: str, threads: int,
            seed: int) -> dict:
    """Ingest a Poisson volume of ``shape``, predict it with a ``filters``-wide model in a fresh process."""
    name = "x".join(map(str, shape))
    raw = folder / f"{name}.ome.zarr"
    if not raw.exists():
        tif = folder / f"{name}.tif"
        tifffile.imwrite(tif, np.random.default_rng(seed).poisson(100, size=shape).astype(np.uint16))
        ingest_tiff(tif, raw, BLOCK)
        tif.unlink()
    model = folder / f"model-{filters}"
    if not model.exists():
        train_n2v(raw, model, TrainConfig(steps=2, batch_size=2, base_filters=filters,
                                          pooling=[[2, 2, 2], [2, 2, 2]]))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PREDICT, str(raw), str(model),
                           str(folder / f"out-{name}-{filters}-{precision}.ome.zarr"), str(threads), precision],
                          check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    voxels = int(np.prod(shape))
    arithmetic = arithmetic_name(autocast_dtype(precision, torch.device("cpu")))
    return {"shape": list(shape), "filters": filters, "arithmetic": arithmetic, "voxels": voxels,
            "wall_s": round(wall, 1),
            "voxels_per_s": round(voxels / wall), "peak_rss_MiB": round(int(done.stdout.split()[-1]) / 1024),
            "load_before_after": [load_before, os.getloadavg()[0]], "n2vpipe_log": done.stdout.splitlines()[-2]}


def write_results(rows: list[dict], machine: str) -> None:
    """JSON, a markdown table and a plot under benchmarks/results/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"# Inference memory and throughput vs volume size ({machine})", "",
             "| shape | filters | arithmetic | voxels | wall s (incl. start-up) | voxels/s | peak RSS MiB "
             "| load before/after |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {'x'.join(map(str, r['shape']))} | {r['filters']} | {r['arithmetic']} | {r['voxels']} | "
              f"{r['wall_s']} | "
              f"{r['voxels_per_s']} | {r['peak_rss_MiB']} | {r['load_before_after'][0]:.1f}/"
              f"{r['load_before_after'][1]:.1f} |" for r in rows]
    lines += [""]
    groups = {key: [r for r in rows if (r["filters"], r["arithmetic"]) == key]
              for key in sorted({(r["filters"], r["arithmetic"]) for r in rows})}
    for (filters, arithmetic), same in groups.items():
        if len(same) > 1:
            growth = same[-1]["peak_rss_MiB"] / same[0]["peak_rss_MiB"] - 1
            lines.append(f"- {filters} filters, {arithmetic}: {same[-1]['voxels'] / same[0]['voxels']:.0f}x the "
                         f"voxels, peak RSS {growth:+.0%} (target: within 25 %)")
        lines.append(f"- {filters} filters, {arithmetic}: largest peak RSS {max(r['peak_rss_MiB'] for r in same)} "
                     "MiB (target for the default block: under 2048 MiB)")
    lines += ["", "Where the time went (n2vpipe's own log line per run):", ""]
    lines += [f"- {'x'.join(map(str, r['shape']))}, {r['filters']} filters, {r['arithmetic']}: "
              f"{r['n2vpipe_log'].split(': ', 1)[-1]}" for r in rows]
    png = save_results("inference_memory", machine, rows, lines)
    fig, ax = plt.subplots(figsize=(5, 4))
    for (filters, arithmetic), same in groups.items():
        ax.plot([r["voxels"] for r in same], [r["peak_rss_MiB"] for r in same], "o-",
                label=f"{filters} filters, {arithmetic}")
    ax.axhline(2048, color="grey", linestyle="--", label="2 GiB")
    ax.set(xlabel="volume (voxels)", ylabel="peak RSS (MiB)", xscale="log", ylim=(0, None))
    ax.legend()
    ax.set_title("n2vpipe inference peak memory")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    main()
