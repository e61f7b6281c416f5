"""Cost of the noise check (n2vpipe.noise.check_noise) against the ingest of the same acquisition.

For each volume: the TIFF is ingested with n2vpipe's ingest (work only: from after the imports to the
last chunk written) with the demo's chunks, then the noise check runs on the new OME-Zarr with the
schema's qc defaults; both are timed in this process, ``--repeats`` times (medians). Volumes: a
synthetic uint16 stack per ``--sizes`` entry (Poisson-Gaussian noise over sparse blurred spots, read noise
averaged over 3 voxels along X so the check has stripes to find) and, when present, the real lattice
light-sheet stack ``../shared/data/llsm/im_raw.tif``. Writes results/noise_check_cost.json and .md.

    python benchmarks/noise_check_cost.py [--sizes 128x1024x1024] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml
from scipy import ndimage

from common import SCHEMA, cpu_model, parse_shape, save_results, shape_text
from n2vpipe.ingest import ingest_tiff
from n2vpipe.noise import check_noise

CHUNKS = {"z": 32, "y": 128, "x": 128}
LLSM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llsm" / "im_raw.tif"


def striped_stack(shape: tuple[int, int, int], path: Path) -> Path:
    """A uint16 stack written plane by plane: Poisson counts of sparse blurred spots plus read noise of std 4
    averaged over 3 voxels along X."""
    rng = np.random.default_rng(0)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for _ in range(shape[0]):
            signal = ndimage.gaussian_filter((rng.random(shape[1:]) > 0.9999) * 30000.0, 3) + 20
            read = ndimage.uniform_filter1d(rng.normal(0, 4, shape[1:]), 3, axis=1) * np.sqrt(3)
            tif.write(np.clip(rng.poisson(signal) + read + 100, 0, 65535).astype(np.uint16), contiguous=True)
    return path


def measure(tiff: Path, folder: Path, threads: int, repeats: int) -> dict[str, object]:
    """Median ingest and noise-check seconds of ``tiff`` and the check's verdict."""
    qc = {k: v["default"] for k, v in yaml.safe_load(SCHEMA.read_text())["properties"]["qc"]["properties"].items()}
    ingest_s, check_s = [], []
    for run in range(repeats):
        zarr_path = folder / f"run{run}.ome.zarr"
        start = time.perf_counter()
        meta = ingest_tiff(tiff, zarr_path, CHUNKS, threads=threads)
        ingest_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        report = check_noise(zarr_path, qc["sample_blocks"], qc["sample_fraction"], qc["correlation_threshold"],
                             qc["seed"])
        check_s.append(time.perf_counter() - start)
    ingest, check = statistics.median(ingest_s), statistics.median(check_s)
    return {"volume": tiff.name, "shape": shape_text(meta.shape), "ingest_s": round(ingest, 3),
            "check_s": round(check, 3), "check_percent_of_ingest": round(100 * check / ingest, 2),
            "verdict": report["verdict"]["message"].split("\n")[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=["128x1024x1024"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiffs = [striped_stack(parse_shape(size), folder / f"striped_{size}.tif") for size in args.sizes]
        for tiff in tiffs + ([LLSM] if LLSM.exists() else []):
            rows.append(measure(tiff, folder / tiff.stem, args.threads, args.repeats))
            print(rows[-1])
    table = ["| volume | shape | ingest (s) | noise check (s) | check / ingest | verdict |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['volume']} | {r['shape']} | {r['ingest_s']} | {r['check_s']} | {r['check_percent_of_ingest']} % "
              f"| {r['verdict']} |" for r in rows]
    save_results("noise_check_cost", f"{cpu_model()}, {args.threads} threads", rows, table)


if __name__ == "__main__":
    main()
