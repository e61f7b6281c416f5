"""bfloat16 (and float16) against float32: what the faster arithmetic costs in denoising quality, side by side.

On the Poisson–Gaussian volume of ``quality_poisson_gaussian.py`` (default 32x128x128, 33.5
photons), n2vpipe trains once per arithmetic (``train.precision`` float32, then bfloat16, then
any others asked for) for the same wall-clock budget, and each model predicts the volume in every
arithmetic (``predict.precision``). The table gives PSNR against the ground truth, steps done,
predict time and the largest difference between a model's prediction and its float32 one. Writes
results/precision_quality.json, .md and .png.

    python benchmarks/precision_quality.py [--minutes 2] [--shape 32x128x128] [--threads 2]
        [--n2vpipe-set KEY=VALUE ...] [--name precision_quality]

On a GPU node, the CUDA path (autocast, float16 with its loss scaler, pinned memory, cuDNN's
autotuner) in a few minutes:

    python benchmarks/precision_quality.py --device cuda --precisions float32,bfloat16,float16 \
        --shape 64x256x256 --minutes 2 --n2vpipe-set base_filters=32 --name precision_quality_gpu
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import cpu_model, load_average, parse_setting, parse_shape, save_results, schema_default, shape_text
from n2vpipe.device import cpu_has_amx_bf16
from n2vpipe.io import ImageMeta, blosc_compressor, create_ome_zarr, open_ome_zarr
from n2vpipe.predict import PredictConfig, predict_volume
from n2vpipe.train import TrainConfig, train_n2v
from quality_poisson_gaussian import DEFAULT_PHOTONS, N2VPIPE_DEFAULTS, make_volume, psnr

PRECISIONS = ("float32", "bfloat16", "float16")


def parse_precisions(text: str) -> tuple[str, ...]:
    """``float32,bfloat16[,float16]``: float32 first, the reference the others are compared with."""
    names = tuple(text.split(","))
    if names[0] != "float32" or not set(names) <= set(PRECISIONS) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: float32 first, then any of {PRECISIONS[1:]}, each once")
    return names


def parse_args() -> argparse.Namespace:
    """Command line; adds ``config`` (the TrainConfig mapping both runs share, less the precision)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=parse_shape, default=(32, 128, 128), help="volume, ZxYxX")
    parser.add_argument("--photons", type=float, default=DEFAULT_PHOTONS)
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per arithmetic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precisions", type=parse_precisions, default=PRECISIONS[:2],
                        help="comma-separated, float32 first (default float32,bfloat16)")
    parser.add_argument("--name", default="precision_quality", help="results/<name>.json, .md, .png")
    parser.add_argument("--n2vpipe-set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="override one TrainConfig setting (value as JSON when it parses)")
    args = parser.parse_args()
    args.config = {**N2VPIPE_DEFAULTS, **dict(args.n2vpipe_set), "max_minutes": args.minutes, "device": args.device}
    return args


def denoise(folder: Path, model: Path, precision: str, args: argparse.Namespace) -> tuple[np.ndarray, float]:
    """Predict the volume with ``model`` in ``precision``; return it and the seconds it took."""
    start = time.perf_counter()
    output = folder / f"{model.name}-{precision}.ome.zarr"
    config = PredictConfig(block=schema_default("predict", "block"), device=args.device, precision=precision,
                           pyramid_levels=1)
    predict_volume(folder / "noisy.ome.zarr", model, output, config, threads=args.threads)
    seconds = time.perf_counter() - start
    return np.asarray(open_ome_zarr(output)[0][...], dtype=np.float32), seconds


def measure(args: argparse.Namespace, truth: np.ndarray, noisy: np.ndarray) -> list[dict[str, Any]]:
    """Train per arithmetic, predict in both; one row per (training, prediction) arithmetic."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="precision-") as tmp:
        folder = Path(tmp)
        meta = ImageMeta("zyx", noisy.shape, "float32", (1.0, 1.0, 1.0))
        create_ome_zarr(folder / "noisy.ome.zarr", meta, (32, 128, 128), blosc_compressor("zstd", 5),
                        "noisy")[...] = noisy
        for trained_in in args.precisions:
            before = load_average()
            model = folder / f"model-{trained_in}"
            history = train_n2v(folder / "noisy.ome.zarr", model, TrainConfig.from_mapping(
                {**args.config, "precision": trained_in}), threads=args.threads).history
            outputs = {p: denoise(folder, model, p, args) for p in args.precisions}
            for predicted_in, (denoised, seconds) in outputs.items():
                gap = float(np.abs(denoised - outputs["float32"][0]).max() / np.ptp(truth))
                rows.append({"trained_in": trained_in, "predicted_in": predicted_in, "psnr": psnr(denoised, truth),
                             "steps": history["steps_done"], "train_s": history["elapsed_s"],
                             "predict_s": round(seconds, 2), "max_diff_to_float32_prediction": gap,
                             "load_before": before, "load_after": load_average()})
                print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], machine: str, args: argparse.Namespace, input_psnr: float) -> list[str]:
    """The results page."""
    lines = [f"# {' / '.join(args.precisions)} arithmetic: denoising quality ({machine})", "",
             (f"{shape_text(args.shape)} Poisson–Gaussian volume at {args.photons:g} photons (input "
              f"{input_psnr:.2f} dB), {args.minutes:g} min of training per arithmetic, {args.threads} threads; "
              f"config {args.config}."), "",
             ("| trained in | predicted in | PSNR dB | steps | train s | predict s | max difference to the model's "
              "float32 prediction / data range | load before -> after |"), "|---|---|---|---|---|---|---|---|"]
    lines += [(f"| {r['trained_in']} | {r['predicted_in']} | {r['psnr']:.3f} | {r['steps']} | {r['train_s']:.0f} | "
               f"{r['predict_s']} | {r['max_diff_to_float32_prediction']:.2e} | {r['load_before']} -> "
               f"{r['load_after']} |") for r in rows]
    return lines


def plot(rows: list[dict[str, Any]], input_psnr: float, png: Path) -> None:
    """PSNR per (training, prediction) arithmetic, with the steps each training run did."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"train {r['trained_in']}\npredict {r['predicted_in']}\n({r['steps']} steps)" for r in rows]
    colours = dict(zip(PRECISIONS, ("tab:cyan", "tab:blue", "tab:purple"), strict=True))
    ax.bar(labels, [r["psnr"] for r in rows], color=[colours[r["trained_in"]] for r in rows])
    for index, row in enumerate(rows):
        ax.text(index, row["psnr"] + 0.1, f"{row['psnr']:.2f}", ha="center", fontsize=9)
    low = min(r["psnr"] for r in rows)
    ax.set(ylabel="PSNR dB", ylim=(max(input_psnr, low - 3), max(r["psnr"] for r in rows) + 1),
           title="same wall-clock training budget per arithmetic")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> None:
    """Make the volume, measure, write the results."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    truth, noisy = make_volume(args.shape, args.photons, seed=0)
    input_psnr = psnr(noisy, truth)
    rows = measure(args, truth, noisy)
    machine = f"{cpu_model()}, {os.cpu_count()} cores, {'with' if cpu_has_amx_bf16() else 'without'} AMX"
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name(0)} (CPU: {machine})"
    png = save_results(args.name, machine, rows, markdown(rows, machine, args, input_psnr))
    plot(rows, input_psnr, png)


if __name__ == "__main__":
    main()
