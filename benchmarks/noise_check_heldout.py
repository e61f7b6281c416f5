"""The noise check (n2vpipe.noise.check_noise) scored on a held-out set of white-noise and stripe-noise volumes.

The set is made in a temporary folder (nothing of it is kept) from seeds, structures and noise levels that
the check's threshold was not tuned on (the tests and benchmarks use seeds 0-2 and blurred spots only):

- structures: ``spots`` (sparse blurred spots), ``dense`` (many small spots: structure nearly everywhere),
  ``filaments`` (blurred random lines), ``cells`` (solid spheres with soft edges);
- noise: gain x Poisson(clean / gain) + Gaussian read noise; levels ``low`` (gain 1, read std 3) and
  ``high`` (gain 4, read std 8) on a clean signal of 10-110 photons, offset 100, stored as uint16;
- read noise white, or a moving average over L = 2 or 3 voxels along X, Y or Z (rescaled to the same std),
  or ``rows``: a constant offset per line along X (sCMOS row noise, 40 % of the read noise variance).

Each volume (32x128x128) is ingested with the pipeline's ingest (chunks 16x64x64) and checked with the
schema's qc defaults. A stripe volume counts as right when exactly its axis is flagged; a white one when
nothing is. Writes results/noise_check_heldout.json and .md.

    python benchmarks/noise_check_heldout.py [--seeds 101 102 103]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from common import cpu_model, save_results, schema_default
from n2vpipe.ingest import ingest_tiff
from n2vpipe.noise import check_noise

SHAPE = (32, 128, 128)
CHUNKS = {"z": 16, "y": 64, "x": 64}
LEVELS = {"low": (1.0, 3.0), "high": (4.0, 8.0)}
AXES = {"z": 0, "y": 1, "x": 2}


def scaled(canvas: np.ndarray) -> np.ndarray:
    """``canvas`` scaled to 10-110 photons."""
    return (10 + 100 * (canvas - canvas.min()) / (np.ptp(canvas) or 1.0)).astype(np.float32)


def spots(rng: np.random.Generator, count: int, sigma: float) -> np.ndarray:
    canvas = np.zeros(SHAPE, np.float32)
    canvas[tuple(rng.integers(0, s, count) for s in SHAPE)] = 1.0
    return scaled(ndimage.gaussian_filter(canvas, sigma))


def filaments(rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros(SHAPE, np.float32)
    for _ in range(25):
        start, direction = rng.uniform(0, SHAPE), rng.normal(size=3)
        points = start + np.outer(np.linspace(0, 150, 400), direction / np.linalg.norm(direction))
        inside = np.all((points >= 0) & (points < SHAPE), axis=1)
        canvas[tuple(points[inside].astype(int).T)] = 1.0
    return scaled(ndimage.gaussian_filter(canvas, 1.2))


def cells(rng: np.random.Generator) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=np.float32)
    canvas = np.zeros(SHAPE, np.float32)
    for _ in range(12):
        centre, radius = rng.uniform(0, SHAPE), rng.uniform(6, 14)
        canvas += (np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))) < radius) * rng.uniform(0.4, 1)
    return scaled(ndimage.gaussian_filter(canvas, 1.5))


STRUCTURES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "spots": lambda rng: spots(rng, 60, 2.5),
    "dense": lambda rng: spots(rng, 4000, 1.2),
    "filaments": filaments,
    "cells": cells,
}


def read_noise(rng: np.random.Generator, std: float, kind: str, axis: str | None) -> np.ndarray:
    """Gaussian read noise of std ``std``: white, a moving average along ``axis`` (kind ``L2``/``L3``), or
    per-line offsets along X (kind ``rows``) carrying 40 % of the variance."""
    white = rng.normal(0.0, std, SHAPE)
    if kind == "white":
        return white
    if kind == "rows":
        offsets = rng.normal(0.0, std * np.sqrt(0.4), SHAPE[:2])[..., None]
        return white * np.sqrt(0.6) + offsets
    length = int(kind[1:])
    return ndimage.uniform_filter1d(white, length, axis=AXES[axis], mode="wrap") * np.sqrt(length)


def cases(seeds: list[int]) -> list[dict[str, object]]:
    """Every held-out volume to make: (structure, level, seed) x (white, stripes of each kind and axis)."""
    noise = [("white", None)] + [(k, a) for k in ("L2", "L3") for a in "xyz"] + [("rows", "x")]
    return [{"structure": s, "level": lv, "seed": seed, "kind": k, "axis": a}
            for s, lv, seed, (k, a) in itertools.product(STRUCTURES, LEVELS, seeds, noise)]


def score(case: dict[str, object], folder: Path) -> dict[str, object]:
    """Make, ingest and check one volume; the flagged axes and whether the check was right."""
    rng = np.random.default_rng([int(case["seed"]), list(STRUCTURES).index(case["structure"])])
    clean = STRUCTURES[case["structure"]](rng)
    gain, std = LEVELS[case["level"]]
    volume = gain * rng.poisson(clean / gain) + read_noise(rng, std, case["kind"], case["axis"]) + 100
    tifffile.imwrite(folder / "raw.tif", np.clip(np.round(volume), 0, 65535).astype(np.uint16))
    start = time.perf_counter()
    ingest_tiff(folder / "raw.tif", folder / "raw.ome.zarr", CHUNKS, threads=1)
    ingest_s = time.perf_counter() - start
    start = time.perf_counter()
    report = check_noise(folder / "raw.ome.zarr", schema_default("qc", "sample_blocks"),
                         schema_default("qc", "sample_fraction"), schema_default("qc", "correlation_threshold"),
                         schema_default("qc", "seed"))
    check_s = time.perf_counter() - start
    flagged = sorted(report["verdict"]["axes"]) if report["verdict"]["correlated"] else []
    expected = [] if case["axis"] is None else [case["axis"]]
    excess = {a["axis"]: round(float(a["excess"][0]), 3) for a in report["channels"][0]["axes"]}
    return {**case, "flagged": flagged, "right": flagged == expected, "excess_lag1": excess,
            "lengths": report["verdict"]["axes"], "struct_mask": report["verdict"]["struct_mask"],
            "ingest_s": round(ingest_s, 3), "check_s": round(check_s, 3)}


def headline(rows: list[dict[str, object]], label: str) -> str:
    """How many stripe volumes got exactly their axis and how many white ones were flagged, over ``rows``."""
    stripes = [r for r in rows if r["axis"] is not None]
    white = [r for r in rows if r["axis"] is None]
    masks = sum(r["struct_mask"] is not None for r in white)
    return (f"{label}: stripe volumes flagged with exactly their axis **{sum(r['right'] for r in stripes)} / "
            f"{len(stripes)}**; white-noise volumes flagged **{sum(not r['right'] for r in white)} / {len(white)}** "
            f"(given a struct mask: {masks})")


def table_lines(rows: list[dict[str, object]], seeds: list[int]) -> list[str]:
    """The markdown report: headlines, then one line per noise kind and structure with the wrong verdicts."""
    lines = [f"Machine: {cpu_model()}; seeds {seeds}; volumes {'x'.join(map(str, SHAPE))}; qc defaults.", "",
             "- " + headline(rows, "all structures"),
             "- " + headline([r for r in rows if r["structure"] != "dense"], "without `dense`"),
             "- " + headline([r for r in rows if r["structure"] == "dense"], "`dense` alone"), "",
             "| noise | structure | right / volumes | wrong: level seed -> flagged (excess lag-1 Z/Y/X) |",
             "|---|---|---|---|"]
    key = lambda r: (r["axis"] is not None, str(r["kind"]), str(r["axis"]), r["structure"])  # noqa: E731
    for (_, kind, axis, structure), members in itertools.groupby(sorted(rows, key=key), key=key):
        members = list(members)
        wrong = [f"{r['level']} {r['seed']} -> {','.join(r['flagged']) or 'none'} "
                 f"({'/'.join(str(r['excess_lag1'][a]) for a in 'zyx')})" for r in members if not r["right"]]
        noise = "white" if axis == "None" else f"{kind} along {axis.upper()}"
        lines.append(f"| {noise} | {structure} | {sum(r['right'] for r in members)} / {len(members)} | "
                     f"{'; '.join(wrong)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[101, 102, 103])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, case in enumerate(cases(args.seeds)):
            folder = Path(tmp) / f"v{number}"
            folder.mkdir()
            rows.append(score(case, folder))
            print(rows[-1], flush=True)
    table = table_lines(rows, args.seeds)
    save_results("noise_check_heldout", cpu_model(), rows, table)
    print("\n".join(table))


if __name__ == "__main__":
    main()
