"""2D Noise2Void quality on real images with ground truth: PSNR against training time, from one training run.

One invocation = one dataset (--dataset), read in place from ``../shared/data`` (relative to the repository
root; --data to change; a missing folder is skipped with a message). Its noisy images, all of one shape, are
stacked as a TYX float32 OME-Zarr (T = image index), so n2vpipe trains one 2D network on patches from random
images (``train_n2v`` in a fresh process, TrainConfig ``N2VPIPE_DEFAULTS`` below, changed with
``--n2vpipe-set key=value``, values parsed as JSON where they parse, recorded in the JSON; ``max_minutes`` =
--minutes, ``steps`` large enough that the wall budget ends training, ``checkpoint_every`` =
--checkpoint-every, ``device`` = --device). n2vpipe holds out the last tenth of the longest spatial axis of
every image (at least half a patch) for validation; evaluation covers the whole images.

The curve: while training runs, this process polls n2vpipe's partial model folder every --poll-seconds and
copies each new checkpoint (written atomically) to a scratch folder, noting when it saw it; beyond twice
--curve-points copies, the one whose neighbours are closest in time is deleted, so the rest stay spread
evenly. Afterwards at most --curve-points of them, spread over the run, are evaluated with the weights they
hold at that step (``model``), plus the final model, which holds the weights of the step with the lowest
validation loss. Each image is denoised whole (``n2vpipe.predict.run_network``, the final model's
normalisation, eval mode) on --device with --threads torch threads. Time is n2vpipe's training-loop clock
(``elapsed_s`` in the checkpoint and in the model's history: set-up excluded); ``seen_s``, the wall clock
since the training process started when the copy was made, is recorded beside it.

Datasets and PSNR (10 log10(peak^2 / MSE), per image, averaged over images; the input PSNR is the noisy image
scored the same way):

* ``bsd68``: the 68 clean 8-bit BSD68 images, the 15 portrait ones transposed to 321x481, plus
  Normal(0, 25^2) noise (--seed, float32, no clipping or rounding); peak 255, as in Noise2Void (Krull et
  al. 2019: 27.71 dB for N2V) and CAREamics' BSD68 example (26.30 dB). The noise draw differs from theirs.
* ``fmd``: FMD confocal pairs, a raw frame against the 50-frame average (BPAE R/G/B channels from the
  3-slice TIFFs, Confocal_FISH_3); peak = range (max - min) of the average; nothing fitted.
* ``w2s``: W2S test fields, a single widefield frame against the 400-frame average, each image 8-bit and
  contrast-stretched on its own; the estimate is first mapped by the scale and offset that fit it to the
  ground truth by least squares, then scored with peak = range of the ground truth.

--limit N takes the first N images (by file name; for fmd in the order above). Load averages before
training and after evaluation are recorded, as other users of the CPU slow training within its budget.

Writes results/<name>.json, .md and .png (PSNR against training time per dataset, the BSD68 references
dashed; a crop of this run's first image: noisy, n2vpipe, ground truth). With --append, rows of other
datasets already in results/<name>.json are kept, so one invocation per dataset builds one table.

    python benchmarks/quality_2d.py --dataset bsd68 [--minutes 10] [--threads 2] [--device cpu]
        [--limit N] [--checkpoint-every 20] [--curve-points 6] [--poll-seconds 2] [--seed 0]
        [--n2vpipe-set key=value ...] [--data ../shared/data] [--name quality_2d] [--append]
    python benchmarks/quality_2d.py --dataset fmd --append
    python benchmarks/quality_2d.py --dataset w2s --limit 12 --append
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image

from common import RESULTS, cpu_model, load_average, parse_setting, save_results
from n2vpipe.device import select_device
from n2vpipe.io import ImageMeta, blosc_compressor, create_ome_zarr, partial_path
from n2vpipe.model_io import ModelDescription, load_model
from n2vpipe.predict import run_network
from n2vpipe.train import CHECKPOINT_FILE
from n2vpipe.unet import UNet, memory_format, total_downsampling

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DATASETS = ("bsd68", "fmd", "w2s")
BSD68_SIGMA = 25.0
REFERENCES = {"Noise2Void paper (Krull et al. 2019)": 27.71, "CAREamics BSD68 example": 26.30}
"""Published BSD68 PSNRs (sigma 25, peak 255), drawn as dashed lines for bsd68."""
CHUNKS = (1, 128, 128)
CROP = 192
N2VPIPE_DEFAULTS: dict[str, Any] = {
    "variant": "n2v", "patch": {"y": 64, "x": 64}, "batch_size": 16, "base_filters": 32, "depth": 2,
    "learning_rate": 4e-4, "lr_schedule": "cosine", "masked_fraction": 0.002, "validate_every": 20,
    "steps": 1_000_000,
}
"""n2vpipe's TrainConfig; --n2vpipe-set overrides keys; --minutes, --checkpoint-every and --device set
``max_minutes``, ``checkpoint_every`` and ``device``."""
METRICS = {
    "bsd68": "PSNR with peak 255 against the clean image",
    "fmd": "PSNR with peak = range of the 50-frame average, nothing fitted",
    "w2s": "PSNR with peak = range of the 400-frame average, after a least-squares scale and offset fit of the "
           "estimate to it",
}

TRAIN = """
import json, sys
from pathlib import Path
from n2vpipe.train import TrainConfig, train_n2v

args = json.loads(sys.argv[1])
train_n2v(Path(args["zarr"]), Path(args["model"]), TrainConfig.from_mapping(args["config"]), threads=args["threads"])
"""


@dataclass
class Dataset:
    """Noisy images and their ground truths, float32, all of one shape."""

    name: str
    labels: list[str]
    noisy: list[np.ndarray]
    truth: list[np.ndarray]


@dataclass
class Snapshot:
    """A copy of one training checkpoint and the wall clock (since training started) when it was seen."""

    path: Path
    seen_s: float


def read_image(path: Path) -> np.ndarray:
    """One 8-bit grayscale PNG or TIFF as float32."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path).astype(np.float32)
    return np.asarray(Image.open(path), dtype=np.float32)


def load_bsd68(folder: Path, limit: int | None, seed: int) -> Dataset:
    """Clean images (portrait ones transposed to landscape) plus Normal(0, 25^2) noise, in file order."""
    rng = np.random.default_rng(seed)
    labels, noisy, truth = [], [], []
    for path in sorted(folder.glob("test*.png"))[:limit]:
        clean = read_image(path)
        clean = clean.T if clean.shape[0] > clean.shape[1] else clean
        labels.append(path.stem)
        truth.append(clean)
        noisy.append((clean + rng.normal(0.0, BSD68_SIGMA, clean.shape)).astype(np.float32))
    return Dataset("bsd68", labels, noisy, truth)


def load_fmd(folder: Path, limit: int | None) -> Dataset:
    """Raw frame and 50-frame average: the three BPAE channels of the 3-slice TIFFs, then Confocal_FISH_3."""
    raw = tifffile.imread(folder / "3D_volume_raw_stack1_32bit.tif").astype(np.float32)
    average = tifffile.imread(folder / "3D_volume_gt_stack1_32bit.tif").astype(np.float32)
    labels = [f"BPAE_{channel}_1" for channel in "RGB"] + ["Confocal_FISH_3"]
    noisy = [*raw, read_image(folder / "Confocal_FISH_3.png")]
    truth = [*average, read_image(folder / "gt_Confocal_FISH_3.png")]
    return Dataset("fmd", labels[:limit], noisy[:limit], truth[:limit])


def load_w2s(folder: Path, limit: int | None) -> Dataset:
    """Single frame and 400-frame average of each test field and channel present, sorted by name."""
    labels, noisy, truth = [], [], []
    for path in sorted((folder / "noisy_avg1").glob("input_avg1_*.tif"))[:limit]:
        field_channel = path.stem.removeprefix("input_avg1_")
        labels.append(field_channel)
        noisy.append(read_image(path))
        truth.append(read_image(folder / "gt_avg400" / f"target_avg400_{field_channel}.tif"))
    return Dataset("w2s", labels, noisy, truth)


def load_dataset(name: str, data: Path, limit: int | None, seed: int) -> Dataset:
    """The images of dataset ``name`` from its folder under ``data``."""
    if name == "bsd68":
        return load_bsd68(data / "bsd68", limit, seed)
    if name == "fmd":
        return load_fmd(data / "fmd", limit)
    return load_w2s(data / "w2s", limit)


def fit_affine(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``a * estimate + b`` with the scale a and offset b that fit it to ``truth`` by least squares."""
    x = estimate.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (scale, offset), *_ = np.linalg.lstsq(design, truth.astype(np.float64).ravel(), rcond=None)
    return scale * estimate.astype(np.float64) + offset


def comparable(dataset: str, estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The estimate as it is scored: affinely fitted to the ground truth for w2s, as it is otherwise."""
    return fit_affine(estimate, truth) if dataset == "w2s" else estimate.astype(np.float64)


def psnr(dataset: str, estimate: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB by the dataset's definition (``METRICS``)."""
    peak = 255.0 if dataset == "bsd68" else float(truth.max() - truth.min())
    mse = float(np.mean((comparable(dataset, estimate, truth) - truth) ** 2))
    return float(10 * np.log10(peak**2 / mse))


def write_stack(path: Path, images: list[np.ndarray], name: str) -> None:
    """Stack the images as a TYX float32 OME-Zarr with unit pixel size."""
    meta = ImageMeta("tyx", (len(images), *images[0].shape), "float32", (1.0, 1.0, 1.0))
    array = create_ome_zarr(path, meta, CHUNKS, blosc_compressor("zstd", 5), name)
    array[...] = np.stack(images)


def copy_if_new(checkpoint: Path, scratch: Path, seen: tuple[int, int] | None,
                started: float) -> tuple[Snapshot | None, tuple[int, int] | None]:
    """Copy ``checkpoint`` when its (inode, mtime) differs from ``seen``; return the copy (or None) and the
    identity seen now. n2vpipe replaces the file atomically, so the open file is one whole checkpoint, and the
    identity is that of the file copied."""
    try:
        with open(checkpoint, "rb") as source:
            stat = os.fstat(source.fileno())
            identity = (stat.st_ino, stat.st_mtime_ns)
            if identity == seen:
                return None, seen
            seen_s = time.perf_counter() - started
            target = scratch / f"checkpoint-{seen_s:09.2f}.pt"
            with open(target, "wb") as copy:
                shutil.copyfileobj(source, copy)
    except FileNotFoundError:  # not written yet, or removed as training ends
        return None, seen
    return Snapshot(target, seen_s), identity


def thin(snapshots: list[Snapshot], keep: int) -> list[Snapshot]:
    """Beyond ``keep`` copies, delete the one (never the first or the latest) whose neighbours are closest in
    time, so that the rest stay evenly spread over the run."""
    if len(snapshots) <= max(2, keep):
        return snapshots
    gaps = [after.seen_s - before.seen_s for before, after in zip(snapshots, snapshots[2:], strict=False)]
    drop = 1 + int(np.argmin(gaps))
    snapshots[drop].path.unlink()
    return snapshots[:drop] + snapshots[drop + 1:]


def train_with_snapshots(zarr_path: Path, model_dir: Path, config: dict[str, Any], threads: int, scratch: Path,
                         keep: int, poll_s: float) -> list[Snapshot]:
    """Train in a fresh process, copying checkpoints from its partial model folder as they appear."""
    checkpoint = partial_path(model_dir) / CHECKPOINT_FILE
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    job = {"zarr": str(zarr_path), "model": str(model_dir), "config": config, "threads": threads}
    log_path = scratch.parent / "train.log"
    snapshots: list[Snapshot] = []
    seen = None
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", TRAIN, json.dumps(job)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
        try:
            while process.poll() is None:
                time.sleep(poll_s)
                snapshot, seen = copy_if_new(checkpoint, scratch, seen, started)
                if snapshot is not None:
                    snapshots = thin([*snapshots, snapshot], keep)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode:
        raise RuntimeError(f"training failed ({process.returncode}):\n{log_path.read_text()[-3000:]}")
    return snapshots


def spread(snapshots: list[Snapshot], count: int) -> list[Snapshot]:
    """At most ``count`` snapshots, the nearest to evenly spaced times from the first to the latest."""
    if len(snapshots) <= count:
        return snapshots
    times = np.array([s.seen_s for s in snapshots])
    picked = {int(np.abs(times - t).argmin()) for t in np.linspace(times[0], times[-1], count)}
    return [snapshots[i] for i in sorted(picked)]


def denoise(model: UNet, description: ModelDescription, image: np.ndarray, device: torch.device) -> np.ndarray:
    """One whole image through the network, in the image's intensity scale."""
    normalised = description.normalisation.apply(image, 0)
    out = run_network(model, normalised, total_downsampling(description.spec), device)
    return description.normalisation.invert(out, 0)


def score(model: UNet, description: ModelDescription, data: Dataset, device: torch.device) -> list[float]:
    """PSNR of each denoised image."""
    return [psnr(data.name, denoise(model, description, noisy, device), truth)
            for noisy, truth in zip(data.noisy, data.truth, strict=True)]


def checkpoint_model(path: Path, description: ModelDescription, device: torch.device) -> tuple[UNet, dict[str, Any]]:
    """The network of the final model's spec with a checkpoint's current weights (eval mode), and the
    checkpoint's step and training-loop seconds."""
    state = torch.load(path, map_location=device, weights_only=True)
    model = UNet(description.spec)
    model.load_state_dict(state["model"])
    model = model.to(device, memory_format=memory_format(description.spec.ndim)).eval()
    return model, {"step": int(state["step"]), "elapsed_s": float(state["elapsed_s"])}


def machine_description(threads: int, device: torch.device) -> str:
    """CPU model name, cores, torch threads and the device."""
    accelerator = f"GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {threads} torch threads, {accelerator}"


def parse_args() -> argparse.Namespace:
    """Command line; adds ``n2vpipe_config`` (the TrainConfig mapping n2vpipe will use)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding bsd68/, fmd/, w2s/")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--checkpoint-every", type=int, default=20, help="steps between n2vpipe checkpoints")
    parser.add_argument("--curve-points", type=int, default=6, help="checkpoints evaluated besides the final model")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="how often to look for a new checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="BSD68 noise seed")
    parser.add_argument("--n2vpipe-set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="override one n2vpipe TrainConfig setting (value as JSON when it parses)")
    parser.add_argument("--name", default="quality_2d", help="results/<name>.json, .md, .png")
    parser.add_argument("--append", action="store_true", help="keep rows of other datasets in results/<name>.json")
    args = parser.parse_args()
    args.n2vpipe_config = {**N2VPIPE_DEFAULTS, **dict(args.n2vpipe_set), "max_minutes": args.minutes,
                           "checkpoint_every": args.checkpoint_every, "device": args.device}
    return args


def merge_rows(name: str, rows: list[dict[str, Any]], append: bool) -> list[dict[str, Any]]:
    """With ``append``, the rows already in results/<name>.json of other datasets, then this run's rows."""
    path = RESULTS / f"{name}.json"
    if not append or not path.exists():
        return rows
    done = {r["dataset"] for r in rows}
    return [r for r in json.loads(path.read_text())["rows"] if r["dataset"] not in done] + rows


def markdown(rows: list[dict[str, Any]], machine: str) -> list[str]:
    """The results page: machine, definitions, references, one table row per (dataset, point)."""
    lines = ["# 2D Noise2Void quality on real images: PSNR against training time", "", f"Machine: {machine}.", "",
             ("One n2vpipe training run per dataset (noisy images stacked as TYX, one 2D network); checkpoints "
              "copied while it ran are scored with the weights they held at that step, the final model with the "
              "weights of its lowest validation loss (best step). Time: n2vpipe's training-loop clock (set-up "
              "excluded). PSNR per image, averaged over images; input PSNR: the noisy images scored the same "
              "way. Load averages (1/5/15 min) before training and after evaluation."), ""]
    lines += [f"- {name}: {text}." for name, text in METRICS.items() if any(r["dataset"] == name for r in rows)]
    if any(r["dataset"] == "bsd68" for r in rows):
        lines += ["", f"BSD68 references (sigma {BSD68_SIGMA:g}, peak 255, other noise draws): "
                  + "; ".join(f"{k} {v:.2f} dB" for k, v in REFERENCES.items()) + "."]
    lines += ["", "| dataset | images | budget min | point | step | train s | seen s | PSNR dB | input PSNR dB "
              "| gain dB | steps/min | load before | load after | notes |", "|---" * 14 + "|"]
    for r in rows:
        cells = [r["dataset"], r["images"], f"{r['minutes']:g}", r["point"], r["step"], f"{r['elapsed_s']:.1f}",
                 "-" if r["seen_s"] is None else f"{r['seen_s']:.1f}", f"{r['psnr']:.2f}", f"{r['input_psnr']:.2f}",
                 f"{r['psnr'] - r['input_psnr']:+.2f}", "-" if r.get("steps_per_min") is None
                 else f"{r['steps_per_min']:.0f}", " ".join(map(str, r["load_before"])),
                 " ".join(map(str, r["load_after"])), r.get("notes", "")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        config = next(r["config"] for r in rows if r["dataset"] == dataset)
        lines += ["", f"{dataset} TrainConfig: `{json.dumps(config)}`"]
    return lines


def plot(rows: list[dict[str, Any]], crops: dict[str, np.ndarray], caption: str, png: Path) -> None:
    """PSNR against training time, one panel per dataset (final model starred, input PSNR dotted, BSD68
    references dashed), above this run's example crops on the ground truth's grey scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    columns = max(len(datasets), len(crops))
    fig = plt.figure(figsize=(4.2 * columns, 8.5))
    grid = fig.add_gridspec(2, columns)
    for index, dataset in enumerate(datasets):
        axis = fig.add_subplot(grid[0, index])
        mine = [r for r in rows if r["dataset"] == dataset]
        curve = [r for r in mine if r["point"] == "checkpoint"]
        final = next(r for r in mine if r["point"] == "final")
        axis.plot([r["elapsed_s"] / 60 for r in curve], [r["psnr"] for r in curve], "o-", label="checkpoint weights")
        axis.plot(final["elapsed_s"] / 60, final["psnr"], "*", markersize=14,
                  label=f"final model (best step {final['best_step']})")
        axis.axhline(final["input_psnr"], color="grey", linestyle=":", label="noisy input")
        if dataset == "bsd68":
            for (label, value), colour in zip(REFERENCES.items(), ("tab:red", "tab:green"), strict=True):
                axis.axhline(value, color=colour, linestyle="--", label=f"{label} {value:.2f}")
        axis.set(xlabel="training time (min)", ylabel="PSNR dB", title=f"{dataset} ({final['images']} images)")
        axis.set_xlim(left=0)
        axis.legend(fontsize=7)
    truth = crops["ground truth"]
    for index, (title, image) in enumerate(crops.items()):
        axis = fig.add_subplot(grid[1, index])
        axis.imshow(image, cmap="gray", vmin=truth.min(), vmax=truth.max())
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    fig.text(0.5, 0.01, caption, ha="center")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(png, dpi=100)
    plt.close(fig)


def centre_crop(image: np.ndarray) -> np.ndarray:
    """The central ``CROP`` x ``CROP`` pixels (less where the image is smaller)."""
    y, x = (max(0, (s - CROP) // 2) for s in image.shape)
    return image[y:y + CROP, x:x + CROP]


def main() -> None:
    """Load the dataset, train once while copying checkpoints, score them and the final model, write results."""
    args = parse_args()
    folder = args.data / args.dataset
    if not folder.is_dir():
        print(f"skipping {args.dataset}: no folder {folder} (see ../shared/data/README.md)")
        return
    data = load_dataset(args.dataset, args.data, args.limit, args.seed)
    if not data.noisy:
        print(f"skipping {args.dataset}: no images in {folder}")
        return
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    inputs = [psnr(data.name, noisy, truth) for noisy, truth in zip(data.noisy, data.truth, strict=True)]
    input_psnr = float(np.mean(inputs))
    print(f"{data.name}: {len(data.noisy)} images {data.noisy[0].shape}, input PSNR {input_psnr:.2f} dB", flush=True)
    common = {"dataset": data.name, "images": len(data.noisy), "minutes": args.minutes, "threads": args.threads,
              "device": str(device), "seed": args.seed, "input_psnr": input_psnr, "config": args.n2vpipe_config}
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="q2d-") as tmp:
        work = Path(tmp)
        (work / "checkpoints").mkdir()
        write_stack(work / "noisy.ome.zarr", data.noisy, data.name)
        snapshots = train_with_snapshots(work / "noisy.ome.zarr", work / "model", args.n2vpipe_config, args.threads,
                                         work / "checkpoints", 2 * args.curve_points, args.poll_seconds)
        final_model, description = load_model(work / "model", device)
        rows = []
        for snapshot in spread(snapshots, args.curve_points):
            model, facts = checkpoint_model(snapshot.path, description, device)
            score_mean = float(np.mean(score(model, description, data, device)))
            rows.append({**common, "point": "checkpoint", **facts, "seen_s": snapshot.seen_s, "psnr": score_mean})
            print(f"step {facts['step']} at {facts['elapsed_s']:.0f} s: PSNR {score_mean:.2f} dB", flush=True)
        finals = score(final_model, description, data, device)
        history = description.history
        rows.append({**common, "point": "final", "step": history["steps_done"], "elapsed_s": history["elapsed_s"],
                     "seen_s": None, "psnr": float(np.mean(finals)), "best_step": history["best_step"],
                     "stopped_by": history["stopped_by"],
                     "steps_per_min": 60 * history["steps_done"] / history["elapsed_s"],
                     "psnr_per_image": dict(zip(data.labels, finals, strict=True)),
                     "input_psnr_per_image": dict(zip(data.labels, inputs, strict=True)),
                     "notes": f"stopped by {history['stopped_by']}; weights of step {history['best_step']}"})
        estimate = denoise(final_model, description, data.noisy[0], device)
    after = load_average()
    for row in rows:
        row.update(load_before=before, load_after=after)
    print(f"final: {history['steps_done']} steps in {history['elapsed_s']:.0f} s "
          f"({rows[-1]['steps_per_min']:.0f}/min), best step {history['best_step']}: PSNR {rows[-1]['psnr']:.2f} dB "
          f"(input {input_psnr:.2f}); load {before} -> {after}", flush=True)
    truth = data.truth[0]
    crops = {f"noisy {inputs[0]:.2f} dB": comparable(data.name, data.noisy[0], truth),
             f"n2vpipe {finals[0]:.2f} dB": comparable(data.name, estimate, truth), "ground truth": truth}
    crops = {k: centre_crop(v) for k, v in crops.items()}
    fitted = " (noisy and n2vpipe fitted to it)" if data.name == "w2s" else ""
    machine = machine_description(args.threads, device)
    all_rows = merge_rows(args.name, rows, args.append)
    png = save_results(args.name, machine, all_rows, markdown(all_rows, machine))
    plot(all_rows, crops, f"{data.name} {data.labels[0]}, central {CROP}x{CROP} crop{fitted}", png)


if __name__ == "__main__":
    main()
