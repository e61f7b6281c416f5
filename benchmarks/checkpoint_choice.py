"""Which weights to keep, and what weight averaging (EMA) and test-time augmentation (TTA) add.

One training run per image (``train_n2v``, one torch thread, a step budget so that runs repeat), on a few
real 2D W2S fields (a single frame against the 400-frame average, scored as in ``quality_2d.py``: the
estimate affinely fitted to the ground truth, peak = its range) and on synthetic 3D Poisson-Gaussian
volumes (``quality_poisson_gaussian.make_volume``, peak = the ground truth's range). At every validation
(``checkpoint_every`` = ``validate_every``) the run's raw weights and their moving average (``ema_decay``)
are kept in memory. Afterwards, for every kept step, this script scores:

* the old validation signal: ``validation_patches`` = 16 patches, each with one masking draw of the training
  ``masked_fraction`` (about a hundred scored pixels at the default 0.2 %), as n2vpipe computed it before;
* the new one: ``ValidationSet`` (every pixel of the validation patches scored once, under fixed masks);
* the PSNR of the whole image denoised with those weights.

It reports the PSNR of the weights each rule keeps: the old signal's lowest, the new signal's lowest, the last;
for the raw weights and for the averaged ones (validation then scores the average, as n2vpipe does with
``ema_decay`` above 0); and the best PSNR of any kept step (an oracle, for scale). Then TTA
(``run_network(tta=True)``) on the weights the new signal keeps, with the time of one whole-image prediction
with and without it, and the seconds one validation takes under each signal beside one training step.

    nice -n 10 python benchmarks/checkpoint_choice.py [--fields 081_0,085_1,090_2] [--volumes 30]
        [--steps-2d 300] [--steps-3d 300] [--ema-decay 0.999] [--validation-patches 8]
        [--set-2d key=value ...] [--name checkpoint_choice]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

import n2vpipe.train as train_module
import quality_2d
import quality_poisson_gaussian
from common import cpu_model, load_average, parse_setting, parse_shape, save_results
from n2vpipe.io import ImageMeta, blosc_compressor, create_ome_zarr, open_ome_zarr
from n2vpipe.model_io import load_description
from n2vpipe.predict import run_network
from n2vpipe.train import (
    PatchPool,
    TrainConfig,
    ValidationSet,
    build_spec,
    effective_patch,
    masked_loss,
    split_regions,
    train_n2v,
    validation_patch,
)
from n2vpipe.unet import UNet, total_downsampling

ROOT = Path(__file__).resolve().parents[1]
W2S = ROOT.parent / "shared" / "data" / "w2s"
OLD_VALIDATION_PATCHES = 16
CPU = torch.device("cpu")
DEFAULTS = TrainConfig().to_dict()
SETTINGS_2D: dict[str, Any] = {"validate_every": 50, "checkpoint_every": 50, "device": "cpu", "precision": "float32"}
SETTINGS_3D: dict[str, Any] = {**SETTINGS_2D, "patch": {"z": 16, "y": 32, "x": 32}, "batch_size": 4,
                               "base_filters": 16, "masked_fraction": 0.02, "learning_rate": 1e-3}
"""Schema defaults otherwise (2D: 32 filters, 0.2 % masked, 4e-4, batch 8 of 64 x 64); the 3D runs use the
short-budget settings of ``benchmarks/README.md`` on smaller patches, to fit a few CPU minutes."""


def write_zarr(folder: Path, image: np.ndarray) -> Path:
    """``image`` (YX or ZYX, float32) as an OME-Zarr with unit voxel size."""
    axes = "zyx" if image.ndim == 3 else "yx"
    meta = ImageMeta(axes, image.shape, "float32", (1.0,) * image.ndim)
    chunks = (16, 64, 64) if image.ndim == 3 else (128, 128)
    array = create_ome_zarr(folder / "raw.ome.zarr", meta, chunks, blosc_compressor("zstd", 5), folder.name)
    array[...] = image
    return folder / "raw.ome.zarr"


def train_keeping_snapshots(zarr_path: Path, model_dir: Path,
                            config: TrainConfig) -> tuple[list[dict[str, Any]], float]:
    """Train; return the raw and averaged weights at every checkpoint, and the training seconds."""
    snapshots: list[dict[str, Any]] = []
    original = train_module._save_checkpoint

    def save_and_keep(path: Path, cfg: TrainConfig, position: Any, state: Any) -> None:
        snapshots.append({"step": position.step, "raw": copy.deepcopy(state.model.state_dict()),
                          "ema": copy.deepcopy(state.average.model.state_dict())})
        original(path, cfg, position, state)

    train_module._save_checkpoint = save_and_keep
    started = time.perf_counter()
    try:
        train_n2v(zarr_path, model_dir, config, threads=1)
    finally:
        train_module._save_checkpoint = original
    return snapshots, time.perf_counter() - started


def validation_signals(zarr_path: Path, config: TrainConfig, model_dir: Path) -> tuple[Any, ValidationSet]:
    """The old fixed validation batch (16 patches, one draw of the training mask) and the new validation set,
    cut from the validation slab with the seeds ``train_n2v`` uses."""
    array, meta = open_ome_zarr(zarr_path)
    spec = build_spec(config, meta)
    grid = total_downsampling(spec)
    patch = effective_patch(meta, config, grid, zarr_path)
    _, region = split_regions(meta.spatial_shape, patch, config.validation_fraction, grid)
    normalisation = load_description(model_dir).normalisation

    def patches(count: int) -> np.ndarray:
        pool = PatchPool(array, meta, region, validation_patch(patch, region), normalisation, 2, 1,
                         np.random.default_rng(config.seed + 1))
        return pool.sample(count)

    old = train_module._masked_tensors(patches(OLD_VALIDATION_PATCHES), config,
                                       np.random.default_rng(config.seed + 2), CPU)
    new = ValidationSet.build(patches(config.validation_patches), config, np.random.default_rng(config.seed + 2), CPU)
    return old, new


def old_loss(model: UNet, batch: Any) -> float:
    """The validation loss as n2vpipe computed it before: one masking draw of the fixed batch."""
    with torch.no_grad():
        return float(masked_loss(model(batch[0]), batch[1], batch[2], "mse"))


def denoise(model: UNet, model_dir: Path, noisy: np.ndarray, tta: bool = False) -> tuple[np.ndarray, float]:
    """The whole image denoised (input intensities) and the seconds it took."""
    description = load_description(model_dir)
    norm = description.normalisation
    started = time.perf_counter()
    out = run_network(model, norm.apply(noisy, 0), total_downsampling(description.spec), CPU, tta=tta)
    return norm.invert(out, 0), time.perf_counter() - started


def evaluate(label: str, kind: str, noisy: np.ndarray, truth: np.ndarray, config: TrainConfig,
             folder: Path) -> dict[str, Any]:
    """Train on ``noisy``, score every kept step under both signals and by PSNR; the row for ``label``."""
    def score(estimate: np.ndarray) -> float:
        if kind == "w2s":
            return quality_2d.psnr("w2s", estimate, truth)
        return quality_poisson_gaussian.psnr(estimate, truth)

    zarr_path = write_zarr(folder, noisy)
    model_dir = folder / "model"
    snapshots, train_s = train_keeping_snapshots(zarr_path, model_dir, config)
    history = load_description(model_dir).history
    old_batch, new_set = validation_signals(zarr_path, config, model_dir)
    model = UNet(load_description(model_dir).spec).eval()
    steps, timing = [], {"old_validation_s": 0.0, "new_validation_s": 0.0}
    for snap in snapshots:
        row: dict[str, Any] = {"step": snap["step"]}
        for which in ("raw", "ema"):
            model.load_state_dict(snap[which])
            tick = time.perf_counter()
            row[f"old_{which}"] = old_loss(model, old_batch)
            timing["old_validation_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            row[f"new_{which}"] = new_set.loss(model, "mse")
            timing["new_validation_s"] += time.perf_counter() - tick
            row[f"psnr_{which}"] = score(denoise(model, model_dir, noisy)[0])
        steps.append(row)
    choices = {}
    for which in ("raw", "ema"):
        for rule, pick in (("old_signal", lambda r, w=which: r[f"old_{w}"]),
                           ("new_signal", lambda r, w=which: r[f"new_{w}"])):
            chosen = min(steps, key=pick)
            choices[f"{which}_{rule}"] = {"step": chosen["step"], "psnr": chosen[f"psnr_{which}"]}
        choices[f"{which}_last"] = {"step": steps[-1]["step"], "psnr": steps[-1][f"psnr_{which}"]}
        best = max(steps, key=lambda r, w=which: r[f"psnr_{w}"])
        choices[f"{which}_oracle"] = {"step": best["step"], "psnr": best[f"psnr_{which}"]}
    tta = {}
    for which in ("raw", "ema"):
        chosen_step = choices[f"{which}_new_signal"]["step"]
        model.load_state_dict(next(s[which] for s in snapshots if s["step"] == chosen_step))
        plain, plain_s = denoise(model, model_dir, noisy)
        augmented, tta_s = denoise(model, model_dir, noisy, tta=True)
        tta[which] = {"step": chosen_step, "psnr_plain": score(plain), "psnr_tta": score(augmented),
                      "plain_s": round(plain_s, 3), "tta_s": round(tta_s, 3)}
    evaluations = 2 * len(snapshots)
    return {"image": label, "kind": kind, "shape": list(noisy.shape), "input_psnr": score(noisy),
            "steps_done": history["steps_done"], "train_s": round(train_s, 1),
            "s_per_step": round(train_s / history["steps_done"], 4),
            "old_validation_s": round(timing["old_validation_s"] / evaluations, 4),
            "new_validation_s": round(timing["new_validation_s"] / evaluations, 4),
            "new_validation_draws": len(new_set.inputs), "new_validation_patches": config.validation_patches,
            "config": {k: v for k, v in config.to_dict().items() if v != DEFAULTS[k]},
            "choices": choices, "tta": tta, "per_step": steps}


def rank_agreement(signal: list[float], psnr: list[float]) -> float:
    """Spearman's rank correlation between a loss and the PSNR over the validated steps, sign turned so that
    1 = the loss ranks the steps exactly as the PSNR does."""
    def ranks(values: list[float]) -> np.ndarray:
        return np.argsort(np.argsort(values)).astype(np.float64)

    if len(signal) < 3:
        return float("nan")
    return float(-np.corrcoef(ranks(signal), ranks(psnr))[0, 1])


def markdown(rows: list[dict[str, Any]], machine: str) -> list[str]:
    """The result tables."""
    lines = [f"# Which weights to keep; EMA and TTA ({machine})", "",
             "PSNR (dB) of the weights each rule keeps (step in brackets). raw = the optimiser's weights, "
             "EMA = their moving average (validation scores the average). old signal = 16 patches x one draw "
             "of the training mask; new = every pixel of the validation patches once. oracle = best PSNR of any "
             "validated step.", "",
             "| image | input | raw: old signal | raw: new signal | raw: last | raw: oracle | EMA: new signal "
             "| EMA: last | EMA: oracle | steps | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        c = row["choices"]
        cells = [f"{c[key]['psnr']:.2f} ({c[key]['step']})" for key in
                 ("raw_old_signal", "raw_new_signal", "raw_last", "raw_oracle", "ema_new_signal", "ema_last",
                  "ema_oracle")]
        lines.append(f"| {row['image']} | {row['input_psnr']:.2f} | " + " | ".join(cells)
                     + f" | {row['steps_done']} | {row['s_per_step']:.3f} |")
    lines += ["", "Test-time augmentation (8 flips/rotations of the image plane) on the weights the new signal "
              "keeps; seconds of one whole-image prediction, one thread.", "",
              "| image | weights | plain | TTA | gain | plain s | TTA s | cost |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for which, t in row["tta"].items():
            lines.append(f"| {row['image']} | {which} ({t['step']}) | {t['psnr_plain']:.2f} | {t['psnr_tta']:.2f} | "
                         f"{t['psnr_tta'] - t['psnr_plain']:+.2f} | {t['plain_s']:.2f} | {t['tta_s']:.2f} | "
                         f"{t['tta_s'] / t['plain_s']:.1f}x |")
    lines += ["", "How well each signal ranks the validated steps (Spearman's rank correlation with PSNR, raw weights; "
              "1 = exactly), and the cost of one validation (seconds, one thread) beside one training step:", "",
              "| image | steps validated | rank corr. old | rank corr. new | old signal s | new signal s "
              "(patches x draws) | training step s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        per_step = row["per_step"]
        psnr = [r["psnr_raw"] for r in per_step]
        old = rank_agreement([r["old_raw"] for r in per_step], psnr)
        new = rank_agreement([r["new_raw"] for r in per_step], psnr)
        lines.append(f"| {row['image']} | {len(per_step)} | {old:.2f} | {new:.2f} | {row['old_validation_s']:.3f} | "
                     f"{row['new_validation_s']:.3f} ({row['new_validation_patches']} x "
                     f"{row['new_validation_draws']}) | {row['s_per_step']:.3f} |")
    return lines


def parse_args() -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", default="081_0,085_1,090_2", help="W2S field_channel labels ('' for none)")
    parser.add_argument("--volumes", default="30", help="photon counts of the synthetic 3D volumes ('' for none)")
    parser.add_argument("--shape-3d", default="32x96x96")
    parser.add_argument("--steps-2d", type=int, default=300)
    parser.add_argument("--steps-3d", type=int, default=300)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--validation-patches", type=int, default=8)
    parser.add_argument("--set-2d", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="training setting of the 2D runs (value parsed as JSON where it parses)")
    parser.add_argument("--name", default="checkpoint_choice")
    return parser.parse_args()


def main() -> None:
    """Run every image; write results/<name>.json and .md."""
    args = parse_args()
    torch.set_num_threads(1)
    load_before = load_average()
    rows = []
    shared = {"ema_decay": args.ema_decay, "validation_patches": args.validation_patches}
    with tempfile.TemporaryDirectory() as scratch:
        for field in filter(None, args.fields.split(",")):
            noisy = tifffile.imread(W2S / "noisy_avg1" / f"input_avg1_{field}.tif").astype(np.float32)
            truth = tifffile.imread(W2S / "gt_avg400" / f"target_avg400_{field}.tif").astype(np.float32)
            folder = Path(scratch) / f"w2s_{field}"
            folder.mkdir()
            config = TrainConfig(**{**SETTINGS_2D, **shared, "steps": args.steps_2d, **dict(args.set_2d)})
            rows.append(evaluate(f"W2S {field}", "w2s", noisy, truth, config, folder))
            print(f"{field}: {rows[-1]['choices']}", flush=True)
        for photons in filter(None, args.volumes.split(",")):
            truth, noisy = quality_poisson_gaussian.make_volume(parse_shape(args.shape_3d), float(photons), seed=7)
            folder = Path(scratch) / f"volume_{photons}"
            folder.mkdir()
            config = TrainConfig(**SETTINGS_3D, **shared, steps=args.steps_3d)
            rows.append(evaluate(f"3D {args.shape_3d}, {photons} photons", "3d", noisy, truth, config, folder))
    machine = f"{cpu_model()}, 1 torch thread, load {load_before} before / {load_average()} after"
    save_results(args.name, machine, rows, markdown(rows, machine))
    print("\n".join(markdown(rows, machine)))


if __name__ == "__main__":
    main()
