"""Ingest throughput and peak memory: n2vpipe's ingest against a plain tifffile read + zarr write.

Each method runs in its own subprocess (peak RSS: the worker's VmHWM), side by side in one run,
on synthetic uint16 TIFF stacks of growing size, ``--repeats`` fresh runs each (medians reported).
Two times per run: the whole process (interpreter start-up and imports included: n2vpipe's imports
dask.array, ~0.8 s here) and the work alone (from after the imports to the last chunk written), which
is the throughput that matters for large files. Writes results/ingest.json, .md and .png.

    python benchmarks/ingest_throughput.py [--sizes 64x512x512 128x1024x1024 ...] [--threads 2] [--repeats 3]
                                           [--name ingest]
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from common import PRINT_PEAK_RSS_KIB, cpu_model, parse_shape, save_results

CHUNKS = {"z": 32, "y": 256, "x": 256}
CONTIGUOUS = "uncompressed, contiguous"  # layouts end in their kind: contiguous, strips or tiles
READS = {
    "contiguous": "n2vpipe reads each chunk by byte range, its full-width rows into one buffer, and keeps nothing "
                "between chunks; the chunks beside it re-read those rows from the page cache.",
    "strips": "n2vpipe reads each chunk as the band of whole strips (full-width rows) around it, one chunk deep and "
              "tall, kept while the chunks beside it use it: memory follows the plane width.",
    "tiles": "n2vpipe reads each chunk as the whole tiles around it, kept while the chunks beside it use them.",
}

PLAIN = """
import sys, time, numcodecs, tifffile, zarr
started = time.perf_counter()
src, dst = sys.argv[1], sys.argv[2]
data = tifffile.imread(src)
codec = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
out = zarr.create_array(dst, shape=data.shape, chunks=(32, 256, 256), dtype=data.dtype, compressors=codec,
                        zarr_format=2, chunk_key_encoding={"name": "v2", "separator": "/"})
out[:] = data
print(time.perf_counter() - started)
"""

N2VPIPE = """
import sys, time
from n2vpipe.ingest import ingest_tiff
started = time.perf_counter()
ingest_tiff(sys.argv[1], sys.argv[2], {"z": 32, "y": 256, "x": 256}, threads=int(sys.argv[3]))
print(time.perf_counter() - started)
"""


def make_stack(path: Path, shape: tuple[int, int, int], seed: int = 0, compression: str | None = None,
               tile: int = 0) -> None:
    """Write a noisy uint16 stack plane by plane (never whole in memory): uncompressed and contiguous, or
    ``compression`` in strips (``tile`` 0) or in ``tile`` x ``tile`` tiles."""
    rng = np.random.default_rng(seed)
    planes = (rng.poisson(100 + 50 * np.sin(z / 5), size=shape[1:]).astype(np.uint16) for z in range(shape[0]))
    if tile:  # tifffile takes a tiled image as an iterator of its tiles
        planes = (plane[y:y + tile, x:x + tile] for plane in planes
                  for y in range(0, shape[1], tile) for x in range(0, shape[2], tile))
    tifffile.imwrite(path, planes, shape=shape, dtype=np.uint16, bigtiff=True, imagej=False, compression=compression,
                     tile=(tile, tile) if tile else None)


def run(code: str, *args: str) -> tuple[float, float, float]:
    """Wall seconds, seconds of work after the imports (printed by ``code``) and peak RSS (MiB) of
    ``python -c code args`` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + PRINT_PEAK_RSS_KIB, *args], check=True, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    work, peak_kib = done.stdout.split()[-2:]
    return wall, float(work), int(peak_kib) / 1024


def median_run(repeats: int, code: str, src: Path, dst: Path, *args: str) -> tuple[tuple[float, ...], list[float]]:
    """Median (wall s, work s, peak RSS MiB) of ``repeats`` fresh runs writing ``dst``, and every run's peak RSS."""
    runs = []
    for _ in range(repeats):
        shutil.rmtree(dst, ignore_errors=True)
        runs.append(run(code, str(src), str(dst), *args))
    return tuple(statistics.median(column) for column in zip(*runs, strict=True)), [round(r[2]) for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["64x512x512", "128x1024x1024", "256x2048x2048"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs per method and size; medians reported")
    parser.add_argument("--name", default="ingest", help="results/<name>.json, .md, .png")
    parser.add_argument("--tiff-compression", default=None, help="compress the TIFFs (e.g. zstd, lzw); default: none")
    parser.add_argument("--tiff-tile", type=int, default=0, help="with --tiff-compression: tile size; 0 = strips")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        layout = CONTIGUOUS if not args.tiff_compression else \
            f"{args.tiff_compression}, " + (f"{args.tiff_tile}x{args.tiff_tile} tiles" if args.tiff_tile else "strips")
        for text in args.sizes:
            shape = parse_shape(text)
            src = Path(tmp) / f"{text}.tif"
            make_stack(src, shape, compression=args.tiff_compression, tile=args.tiff_tile)
            megabytes = float(np.prod(shape)) * 2 / 1e6
            (plain_s, plain_work_s, plain_mib), plain_peaks = median_run(args.repeats, PLAIN, src,
                                                                         Path(tmp) / f"plain-{text}.zarr")
            (ours_s, ours_work_s, ours_mib), ours_peaks = median_run(args.repeats, N2VPIPE, src,
                                                                     Path(tmp) / f"n2vpipe-{text}.ome.zarr",
                                                                     str(args.threads))
            rows.append({"shape": list(shape), "input_MB": round(megabytes, 1), "layout": layout,
                         "plain_s": round(plain_s, 2), "plain_work_s": round(plain_work_s, 2),
                         "plain_peak_rss_MiB": round(plain_mib), "plain_peak_rss_runs_MiB": plain_peaks,
                         "n2vpipe_s": round(ours_s, 2),
                         "n2vpipe_work_s": round(ours_work_s, 2), "n2vpipe_peak_rss_MiB": round(ours_mib),
                         "n2vpipe_peak_rss_runs_MiB": ours_peaks,
                         "throughput_ratio": round(plain_s / ours_s, 3),
                         "work_throughput_ratio": round(plain_work_s / ours_work_s, 3)})
            print(rows[-1], flush=True)
    machine = f"{cpu_model()}, {args.threads} threads, {platform.system()}"
    write_results(rows, machine, args.name)


def chunk_count(shape: list[int]) -> int:
    """Number of zarr chunks (CHUNKS) in a stack of ``shape``."""
    return math.prod(-(-size // chunk) for size, chunk in zip(shape, CHUNKS.values(), strict=True))


def write_results(rows: list[dict], machine: str, name: str = "ingest") -> None:
    """JSON, a markdown table and a plot under benchmarks/results/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"# Ingest: n2vpipe vs plain tifffile read + zarr write ({machine})", "",
             "| shape | input MB | plain s (work s) | plain peak RSS MiB | n2vpipe s (work s) | "
             "n2vpipe peak RSS MiB | throughput n2vpipe / plain: whole process | work only |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['input_MB']} | {r['plain_s']} ({r['plain_work_s']}) | "
                     f"{r['plain_peak_rss_MiB']} | {r['n2vpipe_s']} ({r['n2vpipe_work_s']}) | "
                     f"{r['n2vpipe_peak_rss_MiB']} | {r['throughput_ratio']:.2f} | {r['work_throughput_ratio']:.2f} |")
    growth = [f"{b['n2vpipe_peak_rss_MiB'] / a['n2vpipe_peak_rss_MiB'] - 1:+.0%}" for a, b in itertools.pairwise(rows)]
    layout = rows[0].get("layout", CONTIGUOUS)  # results written before layouts were recorded are contiguous
    lines += ["", f"n2vpipe peak RSS from one size to the next: {', '.join(growth)} (target: flat, within 25 %).",
              "", f"TIFF layout: {layout}. {READS[layout.split()[-1]]} "
              f"The smallest stack is {chunk_count(rows[0]['shape'])} chunks (32 x 256 x 256) in all.",
              "", "Medians of fresh runs; every run's peak RSS (MiB), n2vpipe / plain: "
              + "; ".join(f"{'x'.join(map(str, r['shape']))}: {r['n2vpipe_peak_rss_runs_MiB']} / "
                          f"{r['plain_peak_rss_runs_MiB']}" for r in rows) + "."]
    png = save_results(name, machine, rows, lines)
    sizes = [r["input_MB"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [r["input_MB"] / r["plain_work_s"] for r in rows], "o-", label="plain tifffile + zarr")
    left.plot(sizes, [r["input_MB"] / r["n2vpipe_work_s"] for r in rows], "o-", label="n2vpipe ingest")
    left.set(xlabel="input size (MB)", ylabel="throughput after imports (MB/s)", xscale="log")
    right.plot(sizes, [r["plain_peak_rss_MiB"] for r in rows], "o-", label="plain tifffile + zarr")
    right.plot(sizes, [r["n2vpipe_peak_rss_MiB"] for r in rows], "o-", label="n2vpipe ingest")
    right.set(xlabel="input size (MB)", ylabel="peak RSS (MiB)", xscale="log", yscale="log")
    for ax in (left, right):
        ax.legend()
    fig.suptitle(machine)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    main()
