"""Warm start (``train.init_from``) against training from scratch, on a held-out volume like the source's.

A source model is trained from scratch on one synthetic 3D Poisson-Gaussian volume
(``quality_poisson_gaussian.make_volume``, --source-seed) for --source-steps. A held-out volume made the
same way with another seed (--target-seed: other balls and filaments, other noise) is then trained on twice
per step budget in --steps: from scratch, and from the source model's weights (``init_from``). Each budget
is its own run (the cosine learning-rate schedule anneals over it, as it would in a real run of that many
steps), with the same seed and settings otherwise. Every model denoises the whole held-out volume; the PSNR
against its clean volume is reported side by side. Budget 0 for the warm start is the source model as it is
(what ``model:`` reuse would give). Settings: the short-budget CPU settings of ``benchmarks/README.md``
(16 filters, 2 % masked, learning rate 1e-3, patch 16x32x32, batch 4), one torch thread, float32.

Reported: the PSNR of the longest from-scratch run (the "from-scratch quality"), the fewest warm-start
steps that reach it (and come within 0.1 dB of it), and their fraction of the from-scratch steps.

    nice -n 10 python benchmarks/warm_start.py [--shape 32x96x96] [--steps 25,50,100,200,400]
        [--source-steps 400] [--source-seed 0] [--target-seed 10] [--name warm_start]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

from common import cpu_model, load_average, parse_shape, save_results, shape_text
from n2vpipe.io import ImageMeta, blosc_compressor, create_ome_zarr
from n2vpipe.model_io import load_model
from n2vpipe.predict import run_network
from n2vpipe.train import TrainConfig, train_n2v
from n2vpipe.unet import total_downsampling
from quality_poisson_gaussian import DEFAULT_PHOTONS, make_volume, psnr

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

SETTINGS: dict[str, Any] = {
    "patch": {"z": 16, "y": 32, "x": 32}, "batch_size": 4, "base_filters": 16, "masked_fraction": 0.02,
    "learning_rate": 1e-3, "validate_every": 25, "device": "cpu", "precision": "float32", "seed": 0,
}
"""Training settings of every run (schema defaults otherwise); ``steps`` and ``init_from`` vary."""
WITHIN_DB = 0.1


def write_zarr(path: Path, image: np.ndarray) -> Path:
    """``image`` (ZYX, float32) as an OME-Zarr with unit voxel size."""
    meta = ImageMeta("zyx", image.shape, "float32", (1.0, 1.0, 1.0))
    create_ome_zarr(path, meta, (16, 64, 64), blosc_compressor("zstd", 5), path.stem)[...] = image
    return path


def denoised_psnr(model_dir: Path, noisy: np.ndarray, truth: np.ndarray) -> float:
    """PSNR against ``truth`` of the whole volume ``noisy`` denoised by the model in ``model_dir``."""
    model, description = load_model(model_dir)
    norm = description.normalisation
    out = run_network(model, norm.apply(noisy, 0), total_downsampling(description.spec), torch.device("cpu"))
    return psnr(norm.invert(out, 0), truth)


def train_run(raw: Path, model_dir: Path, steps: int, init_from: str = "") -> dict[str, Any]:
    """Train ``steps`` steps on ``raw`` (from ``init_from`` when given); the run's facts."""
    started = time.perf_counter()
    description = train_n2v(raw, model_dir, TrainConfig.from_mapping({**SETTINGS, "steps": steps,
                                                                      "init_from": init_from}))
    return {"steps": steps, "train_s": round(time.perf_counter() - started, 1),
            "best_step": description.history["best_step"]}


def fewest_steps(rows: list[dict[str, Any]], start: str, level: float) -> int | None:
    """The smallest budget above 0 whose ``start`` run scores at least ``level`` dB; None when none does."""
    reached = [row["steps"] for row in rows if row["start"] == start and row["steps"] > 0 and row["psnr"] >= level]
    return min(reached) if reached else None


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """From-scratch quality (its longest run), the warm-start training budgets that reach it, and the source
    model as it is."""
    scratch = max((row for row in rows if row["start"] == "scratch"), key=lambda row: row["steps"])
    reach = fewest_steps(rows, "warm", scratch["psnr"])
    near = fewest_steps(rows, "warm", scratch["psnr"] - WITHIN_DB)
    as_is = next(row["psnr"] for row in rows if row["start"] == "warm" and row["steps"] == 0)
    return {"scratch_steps": scratch["steps"], "scratch_psnr": scratch["psnr"], "source_as_is_psnr": as_is,
            "warm_steps_to_reach": reach,
            "warm_steps_within_0.1dB": near,
            "fraction_to_reach": None if reach is None else reach / scratch["steps"],
            "fraction_within_0.1dB": None if near is None else near / scratch["steps"]}


def markdown(rows: list[dict[str, Any]], facts: dict[str, Any], machine: str) -> list[str]:
    """The results table: PSNR per step budget, from scratch and warm-started, side by side."""
    budgets = sorted({row["steps"] for row in rows})
    cell = {(row["start"], row["steps"]): row for row in rows}
    lines = [f"# Warm start vs from scratch ({machine})", "",
             f"Held-out volume {facts['shape']} (seed {facts['target_seed']}), input PSNR "
             f"{facts['input_psnr']:.2f} dB; source model: {facts['source_steps']} steps from scratch on the volume "
             f"of seed {facts['source_seed']} ({facts['source_train_s']:.0f} s). Settings: {facts['settings']}.", "",
             "| steps | from scratch PSNR (dB) | warm start PSNR (dB) | scratch train s | warm train s |",
             "|---|---|---|---|---|"]
    for steps in budgets:
        scratch, warm = cell.get(("scratch", steps)), cell.get(("warm", steps))
        scratch_psnr = f"{scratch['psnr']:.2f}" if scratch else "(untrained)"
        scratch_s = scratch["train_s"] if scratch else ""
        lines.append(f"| {steps} | {scratch_psnr} | {warm['psnr']:.2f} | {scratch_s} | {warm['train_s']} |")
    result = facts["summary"]
    lines += ["", f"From-scratch quality: {result['scratch_psnr']:.2f} dB after {result['scratch_steps']} steps. "
              f"The warm start reaches it in {result['warm_steps_to_reach']} steps "
              f"(fraction {result['fraction_to_reach']}), comes within {WITHIN_DB} dB in "
              f"{result['warm_steps_within_0.1dB']} steps (fraction {result['fraction_within_0.1dB']}). "
              f"Budget 0 of the warm start is the source model as it is (`model:` reuse): "
              f"{result['source_as_is_psnr']:.2f} dB, not counted among the training budgets. The source model's "
              f"own training ({facts['source_steps']} steps) is not counted either: it was trained for its own "
              "acquisition.",
              f"Load average before/after: {facts['load_before']} / {facts['load_after']}."]
    return lines


def plot(rows: list[dict[str, Any]], facts: dict[str, Any], png: Path) -> None:
    """PSNR against training steps, both starts, the input PSNR dashed."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for start, label in (("scratch", "from scratch"), ("warm", "warm start (train.init_from)")):
        points = sorted((row["steps"], row["psnr"]) for row in rows if row["start"] == start)
        ax.plot([s for s, _ in points], [p for _, p in points], "o-", label=label)
    ax.axhline(facts["input_psnr"], ls="--", c="grey", label="noisy input")
    ax.set_xscale("symlog", linthresh=25)
    ax.set_xlabel("training steps on the held-out volume")
    ax.set_ylabel("PSNR against the clean volume (dB)")
    ax.set_title(f"Warm start vs from scratch, {facts['shape']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=parse_shape, default=(32, 96, 96))
    parser.add_argument("--steps", default="25,50,100,200,400", help="step budgets, comma-separated")
    parser.add_argument("--source-steps", type=int, default=400)
    parser.add_argument("--source-seed", type=int, default=0)
    parser.add_argument("--target-seed", type=int, default=10)
    parser.add_argument("--name", default="warm_start")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    budgets = [int(v) for v in args.steps.split(",")]
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="warm_start_") as tmp:
        folder = Path(tmp)
        _, source_noisy = make_volume(args.shape, DEFAULT_PHOTONS, args.source_seed)
        truth, noisy = make_volume(args.shape, DEFAULT_PHOTONS, args.target_seed)
        source_raw = write_zarr(folder / "source.ome.zarr", source_noisy)
        target_raw = write_zarr(folder / "target.ome.zarr", noisy)
        source = train_run(source_raw, folder / "source_model", args.source_steps)
        rows = [{"start": "warm", "steps": 0, "train_s": 0.0, "best_step": None,
                 "psnr": round(denoised_psnr(folder / "source_model", noisy, truth), 3)}]
        for steps in budgets:
            for start, init_from in (("scratch", ""), ("warm", str(folder / "source_model"))):
                model_dir = folder / f"{start}_{steps}"
                row = {"start": start, **train_run(target_raw, model_dir, steps, init_from)}
                row["psnr"] = round(denoised_psnr(model_dir, noisy, truth), 3)
                rows.append(row)
                print(row, flush=True)
    facts = {"shape": shape_text(args.shape), "source_seed": args.source_seed, "target_seed": args.target_seed,
             "source_steps": args.source_steps, "source_train_s": source["train_s"],
             "input_psnr": round(psnr(noisy, truth), 3), "settings": SETTINGS, "load_before": load_before,
             "load_after": load_average()}
    facts["summary"] = summary(rows)
    machine = cpu_model()
    png = save_results(args.name, machine, [{**facts, "kind": "facts"}, *rows], markdown(rows, facts, machine))
    plot(rows, facts, png)
    print("\n".join(markdown(rows, facts, machine)))


if __name__ == "__main__":
    main()
