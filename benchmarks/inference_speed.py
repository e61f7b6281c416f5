"""Inference speed on CPU: n2vpipe's predict_volume against CAREamics tiled prediction, side by side.

n2vpipe runs with its default precision (``auto``: bfloat16 autocast on CPUs with AMX, float32
elsewhere) and, where that is bfloat16, once more in float32, CAREamics' arithmetic; each n2vpipe
row's ceiling comes from the conv3d rate measured in its own arithmetic.

Both run untrained (randomly initialised) 3D U-Nets configured as depth 2 with 32 initial filters
on the same synthetic noisy uint16 volume, normalised with the same mean and standard deviation,
each in its own fresh process, repeats interleaved (n2vpipe, CAREamics, n2vpipe, ...), best run of
each reported. CAREamics runs in a separate interpreter (--careamics-python) and is never imported
here. The two U-Nets differ in detail (CAREamics: narrower bottleneck and decoder, trilinear
upsampling), so each one's FLOPs per voxel is counted and reported.

n2vpipe is timed over the whole predict_volume call: model load, reading the raw OME-Zarr, the
network, writing the compressed output. CAREamics is timed over CAREamist.predict on an in-memory
array (tiles cut, network, stitched back), excluding interpreter start-up, model construction and I/O.
Peak RSS is the worker's VmHWM (a child's ru_maxrss starts at its parent's peak, inherited through
exec); CAREamics' data-loader process is not counted.

Also measured: FLOPs per output voxel of each network (torch FlopCounterMode over one tile's
forward), the conv3d rate of this CPU (FLOP/s of one n2vpipe forward on a large channels-last tile),
hence each network's ceiling voxels/s and the fraction of it each method reaches; voxels the network
actually computed (the inputs of its forward passes: n2vpipe's blocks with halo, CAREamics' tiles) over
output voxels; and n2vpipe's read/compute/write split. Writes results/inference_speed.json, .md and .png.

    python benchmarks/inference_speed.py [--shape 64x512x512] [--block 32x256x256] [--repeats 2]
        [--threads 2] [--careamics-python /tmp/careamics-venv/bin/python] [--quick]
        [--name inference_speed]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import cpu_model, parse_shape, save_results, schema_default, shape_text
from n2vpipe.device import autocast_dtype
from n2vpipe.ingest import ingest_tiff
from n2vpipe.model_io import ModelDescription, Normalisation, save_model
from n2vpipe.predict import fuse_batch_norm, halo_on_grid
from n2vpipe.unet import (
    UNet,
    UNetSpec,
    memory_format,
)

DEFAULT_CAREAMICS_PYTHON = "/tmp/careamics-venv/bin/python"
SPEC = UNetSpec(ndim=3, depth=2, base_filters=32, batch_norm=True)
TARGET_RATIO = 3.0

COUNT_INPUT_VOXELS = """
import math, torch
def peak_rss_kib():
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
SEEN = []
def _count(module, args):
    if isinstance(module, torch.nn.Conv3d) and module.in_channels == 1:
        SEEN.append(args[0].shape[0] * math.prod(args[0].shape[2:]))
torch.nn.modules.module.register_module_forward_pre_hook(_count)
"""

N2VPIPE = COUNT_INPUT_VOXELS + """
import json, sys, time
from n2vpipe.predict import PredictConfig, predict_volume
from n2vpipe.device import arithmetic_name, autocast_dtype
from n2vpipe.unet import UNet
_forward_cropped = UNet.forward_cropped
def _count_block(self, x, *args, **kwargs):
    SEEN.append(x.shape[0] * math.prod(x.shape[2:]))
    return _forward_cropped(self, x, *args, **kwargs)
UNet.forward_cropped = _count_block
args = json.loads(sys.argv[1])
block = dict(zip("zyx", args["block"]))
start = time.perf_counter()
config = PredictConfig(block=block, device="cpu", precision=args["precision"], pyramid_levels=1)
stats = predict_volume(args["raw"], args["model"], args["dst"], config, threads=args["threads"])
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "blocks": stats.blocks, "voxels": stats.voxels, "read_s": stats.read_s,
                  "arithmetic": arithmetic_name(autocast_dtype(args["precision"], torch.device("cpu"))),
                  "compute_s": stats.compute_s, "write_s": stats.write_s, "computed_voxels": sum(SEEN),
                  "torch_threads": torch.get_num_threads(),
                  "peak_rss_kib": peak_rss_kib()}))
"""

CAREAMICS = COUNT_INPUT_VOXELS + """
import json, sys, time
import numpy as np
from torch.utils.flop_counter import FlopCounterMode
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
import careamics
from careamics import CAREamist
from careamics.config import create_advanced_n2v_config
config = create_advanced_n2v_config(
    experiment_name="speed", data_type="array", axes="ZYX", patch_size=args["tile"], batch_size=args["batch_size"],
    normalization="mean_std", normalization_params={"input_means": [args["mean"]], "input_stds": [args["std"]]},
    model_params={"depth": args["depth"], "num_channels_init": args["filters"]}, seed=1)
careamist = CAREamist(config, work_dir=args["work_dir"], enable_progress_bar=False)
network = careamist.model.model
volume = np.load(args["volume"])
SEEN.clear()
start = time.perf_counter()
predictions, _ = careamist.predict(volume, tile_size=tuple(args["tile"]), tile_overlap=tuple(args["overlap"]),
                                   axes="ZYX", data_type="array")
report = {"wall_s": time.perf_counter() - start, "computed_voxels": sum(SEEN),
          "tiles": sum(SEEN) // math.prod(args["tile"]), "output_shape": list(np.squeeze(predictions[0]).shape),
          "num_workers": careamist.config.data_config.num_workers, "torch_threads": torch.get_num_threads(),
          "peak_rss_kib": peak_rss_kib(),
          "torch": torch.__version__, "careamics": careamics.__version__,
          "params": sum(p.numel() for p in network.parameters() if p.requires_grad)}
if args["flops"]:
    network.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 1, *args["tile"]))
    report["flops_per_voxel"] = counter.get_total_flops() / math.prod(args["tile"])
print(json.dumps(report))
"""


def make_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Noisy uint16 volume: Poisson noise around smooth blobs on a background of 100."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    signal = 100 + 400 * (np.sin(z / 5) * np.sin(y / 17) * np.sin(x / 23)) ** 2
    return rng.poisson(signal).astype(np.uint16)


def worker(python: str, code: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``code`` in a fresh ``python`` with ``args`` as JSON; return the JSON it prints last."""
    done = subprocess.run([python, "-c", code, json.dumps(args)], check=False, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{python} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def flops_per_voxel(model: torch.nn.Module, tile: tuple[int, int, int]) -> float:
    """FLOPs of one forward of ``model`` on a ``tile``, per voxel of the tile."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, *tile))
    return counter.get_total_flops() / math.prod(tile)


def conv_rate(model: torch.nn.Module, tile: tuple[int, ...], per_voxel: float, bfloat16: bool,
              repeats: int = 2) -> float:
    """FLOP/s of the fused, channels-last ``model`` on one ``tile``, in float32 or under bfloat16 autocast
    (best of ``repeats``; the first warms up)."""
    x = torch.randn(1, 1, *tile).to(memory_format=memory_format(len(tile)))
    best = math.inf
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return per_voxel * math.prod(tile) / best


def rate_tile(block: tuple[int, int, int]) -> tuple[int, ...]:
    """What n2vpipe feeds its network for a block inside the volume: the block plus its halo on both sides."""
    return tuple(b + 2 * h for b, h in zip(block, halo_on_grid(SPEC), strict=True))


def command_output(command: str) -> str:
    """Standard output of a command without arguments, stripped."""
    return subprocess.run([command], check=True, capture_output=True, text=True).stdout.strip()


def machine_facts(threads: int) -> dict[str, Any]:
    """CPU model, load (``uptime``), thread count and torch version of this interpreter."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": threads, "uptime_before": command_output("uptime"),
            "torch_n2vpipe": torch.__version__}


def prepare(folder: Path, shape: tuple[int, int, int], block: tuple[int, int, int]) -> tuple[float, float]:
    """Write the volume (TIFF ingested to OME-Zarr for n2vpipe, .npy for CAREamics) and a random-init
    n2vpipe model normalising with its mean and std; return (mean, std)."""
    volume = make_volume(shape)
    mean, std = float(volume.mean()), float(volume.std())
    tifffile.imwrite(folder / "volume.tif", volume)
    np.save(folder / "volume.npy", volume)
    meta = ingest_tiff(folder / "volume.tif", folder / "raw.ome.zarr", dict(zip("zyx", block, strict=True)))
    torch.manual_seed(0)
    save_model(UNet(SPEC), ModelDescription(SPEC, Normalisation((mean,), (std,)), meta.spatial_axes), folder / "model")
    return mean, std


def run_n2vpipe(folder: Path, block: tuple[int, int, int], threads: int, precision: str,
                index: int) -> dict[str, Any]:
    """One predict_volume run in a fresh process."""
    return worker(sys.executable, N2VPIPE, {"raw": str(folder / "raw.ome.zarr"), "model": str(folder / "model"),
                                            "dst": str(folder / f"out-{precision}-{index}.ome.zarr"),
                                            "block": list(block), "threads": threads, "precision": precision})


def careamics_args(args: argparse.Namespace, folder: Path, mean: float, std: float, flops: bool) -> dict[str, Any]:
    """Arguments for the CAREamics worker; with ``flops``, it also counts its network's FLOPs per voxel."""
    return {"volume": str(folder / "volume.npy"), "work_dir": str(folder / "careamics"), "tile": list(args.tile),
            "overlap": list(args.overlap), "batch_size": args.careamics_batch_size, "threads": args.threads,
            "depth": SPEC.depth, "filters": SPEC.base_filters, "mean": mean, "std": std, "flops": flops}


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with every run's wall time and the highest peak RSS of all."""
    fastest = min(runs, key=lambda r: r["wall_s"])
    return {**fastest, "all_wall_s": [round(r["wall_s"], 2) for r in runs],
            "peak_rss_kib": max(r["peak_rss_kib"] for r in runs)}


def method_row(name: str, run: dict[str, Any], voxels: int, per_voxel: float, rate: float,
               params: int) -> dict[str, Any]:
    """Result row of one method: speed, memory, ceiling and halo overhead."""
    speed = voxels / run["wall_s"]
    ceiling = rate / per_voxel
    return {"method": name, "wall_s": round(run["wall_s"], 2), "all_wall_s": run["all_wall_s"],
            "voxels_per_s": round(speed), "peak_rss_MiB": round(run["peak_rss_kib"] / 1024),
            "torch_threads": run["torch_threads"], "params": params, "flops_per_voxel": round(per_voxel),
            "ceiling_voxels_per_s": round(ceiling), "fraction_of_ceiling": round(speed / ceiling, 3),
            "halo_overhead": round(run["computed_voxels"] / voxels, 3)}


def parse_args() -> argparse.Namespace:
    """Command line; ``--quick`` shrinks volume, block and tiles to a smoke test with one repeat."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=parse_shape, default=(64, 512, 512))
    parser.add_argument("--block", type=parse_shape, default=None,
                        help="n2vpipe block (default: predict.block in config/schema.yaml)")
    parser.add_argument("--tile", type=parse_shape, default=(32, 128, 128), help="CAREamics tile")
    parser.add_argument("--overlap", type=parse_shape, default=(8, 32, 32), help="CAREamics tile overlap")
    parser.add_argument("--careamics-batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="inference_speed", help="results/<name>.json, .md, .png")
    parser.add_argument("--careamics-python", default=DEFAULT_CAREAMICS_PYTHON)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny volume, block and tiles, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.block, args.tile, args.overlap = (8, 64, 128), (8, 64, 64), (8, 64, 64), (4, 16, 16)
        args.repeats = 1
    args.block = args.block or tuple(schema_default("predict", "block")[a] for a in "zyx")
    return args


def measure_network(block: tuple[int, int, int], tile: tuple[int, int, int],
                    arithmetics: list[str]) -> tuple[float, tuple[int, ...], dict[str, float]]:
    """n2vpipe's FLOPs per voxel (on one CAREamics-sized tile), the tile it computes per block, and the
    conv3d rate (FLOP/s) of its fused, channels-last network on that tile in each arithmetic."""
    model = fuse_batch_norm(UNet(SPEC).eval()).to(memory_format=memory_format(SPEC.ndim))
    per_voxel = flops_per_voxel(model, tile)
    big_tile = rate_tile(block)
    return per_voxel, big_tile, {name: conv_rate(model, big_tile, per_voxel, name == "bfloat16")
                                 for name in arithmetics}


def n2vpipe_precisions() -> list[str]:
    """n2vpipe's default precision, plus float32 (CAREamics' arithmetic) where the default is bfloat16."""
    return ["auto", "float32"] if autocast_dtype("auto", torch.device("cpu")) is not None else ["auto"]


def run_interleaved(args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Prepare the inputs, then run n2vpipe (per precision) and CAREamics alternately, ``args.repeats`` times each."""
    ours: dict[str, list[dict[str, Any]]] = {precision: [] for precision in n2vpipe_precisions()}
    theirs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mean, std = prepare(folder, args.shape, args.block)
        for index in range(args.repeats):
            for precision, runs in ours.items():
                runs.append(run_n2vpipe(folder, args.block, args.threads, precision, index))
                print("n2vpipe", precision, runs[-1], flush=True)
            theirs.append(worker(args.careamics_python, CAREAMICS,
                                 careamics_args(args, folder, mean, std, flops=index == 0)))
            print("careamics", theirs[-1], flush=True)
    return ours, theirs


def build_rows(args: argparse.Namespace, ours_runs: dict[str, list[dict[str, Any]]],
               theirs_runs: list[dict[str, Any]], per_voxel: float, big_tile: tuple[int, ...],
               rates: dict[str, float]) -> list[dict[str, Any]]:
    """One row per method from its best run: n2vpipe per precision, each with its voxels/s ratio to CAREamics
    and its ceiling from the conv rate in its own arithmetic; CAREamics (float32) last."""
    theirs, first = best(theirs_runs), theirs_runs[0]
    if theirs["output_shape"] != list(args.shape):
        raise RuntimeError(f"CAREamics returned shape {theirs['output_shape']}, expected {list(args.shape)}")
    voxels = math.prod(args.shape)
    params = sum(p.numel() for p in UNet(SPEC).parameters())
    reference = method_row("careamics", theirs, voxels, first["flops_per_voxel"], rates["float32"], first["params"])
    reference.update(tile=list(args.tile), overlap=list(args.overlap), tiles=theirs["tiles"], arithmetic="float32",
                     batch_size=args.careamics_batch_size, dataloader_workers=theirs["num_workers"])
    rows = []
    for precision, runs in ours_runs.items():
        ours = best(runs)
        row = method_row("n2vpipe" if precision == "auto" else f"n2vpipe-{precision}", ours, voxels, per_voxel,
                         rates[ours["arithmetic"]], params)
        row.update(block=list(args.block), blocks=ours["blocks"], read_s=round(ours["read_s"], 2),
                   compute_s=round(ours["compute_s"], 2), write_s=round(ours["write_s"], 2),
                   arithmetic=ours["arithmetic"],
                   speed_ratio_over_careamics=round(row["voxels_per_s"] / reference["voxels_per_s"], 2))
        rows.append(row)
    rows.append(reference)
    for row in rows:
        row.update(shape=list(args.shape), rate_tile=list(big_tile),
                   conv_rate_GFLOP_s=round(rates[row["arithmetic"]] / 1e9, 1))
    return rows


def main() -> None:
    """Measure, print and write the results."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    facts = machine_facts(args.threads)
    arithmetics = ["float32", "bfloat16"] if len(n2vpipe_precisions()) > 1 else ["float32"]
    per_voxel, big_tile, rates = measure_network(args.block, args.tile, arithmetics)
    print(f"conv3d GFLOP/s on {big_tile}: {({k: round(v / 1e9, 1) for k, v in rates.items()})}; "
          f"n2vpipe {per_voxel / 1e3:.0f} kFLOP/voxel", flush=True)
    ours_runs, theirs_runs = run_interleaved(args)
    rows = build_rows(args, ours_runs, theirs_runs, per_voxel, big_tile, rates)
    facts.update(torch_careamics=theirs_runs[0]["torch"], careamics=theirs_runs[0]["careamics"],
                 uptime_after=command_output("uptime"))
    for row in rows:
        print(row)
    write_results(args.name, rows, facts)


def describe(facts: dict[str, Any]) -> str:
    """One line naming the machine, software and load."""
    return (f"{facts['cpu']} ({facts['cpus']} CPUs), {facts['threads']} threads; torch {facts['torch_n2vpipe']} "
            f"(n2vpipe), torch {facts['torch_careamics']} + CAREamics {facts['careamics']}; "
            f"uptime before: {facts['uptime_before']}; after: {facts['uptime_after']}")


def table_row(row: dict[str, Any], tiling: str, rss: str) -> str:
    """One markdown table line for a method."""
    cells = [row["method"], row["arithmetic"], tiling, f"{row['wall_s']} ({row['all_wall_s']})", row["voxels_per_s"],
             rss, row["flops_per_voxel"], row["ceiling_voxels_per_s"], row["fraction_of_ceiling"],
             row["halo_overhead"]]
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(rows: list[dict[str, Any]], facts: dict[str, Any]) -> list[str]:
    """The results page: machine, table, ratios, conv rates and n2vpipe's time split."""
    *ours, theirs = rows
    header = ("| method | arithmetic | tiling | best wall s (all) | voxels/s | peak RSS MiB | FLOPs/voxel "
              "| ceiling voxels/s | fraction of ceiling | computed/output voxels |")
    lines = [f"# Inference speed on CPU: n2vpipe vs CAREamics ({shape_text(theirs['shape'])} uint16, "
             "random-init U-Net depth 2, 32 filters)", "", describe(facts), "", header, "|---" * 10 + "|"]
    lines += [table_row(row, f"block {shape_text(row['block'])} + halo, {row['blocks']} blocks",
                        str(row["peak_rss_MiB"])) for row in ours]
    lines += [table_row(theirs, f"tile {shape_text(theirs['tile'])}, overlap {shape_text(theirs['overlap'])}, "
                                f"{theirs['tiles']} tiles, batch {theirs['batch_size']}",
                        f"{theirs['peak_rss_MiB']} (+ {theirs['dataloader_workers']} loader process(es), not counted)"),
              ""]
    lines += [f"{row['method']} ({row['arithmetic']}) / CAREamics (float32) voxels/s: "
              f"**{row['speed_ratio_over_careamics']:.2f}x** (target >= {TARGET_RATIO:.0f}x)." for row in ours]
    rates = {row["arithmetic"]: row["conv_rate_GFLOP_s"] for row in rows}
    lines += ["", (f"Conv3d rate (n2vpipe network, fused BatchNorm, channels-last, one "
                   f"{shape_text(theirs['rate_tile'])} tile): "
                   + ", ".join(f"{rate} GFLOP/s in {name}" for name, rate in rates.items())
                   + "; ceiling = rate in the row's arithmetic / FLOPs per output voxel."), ""]
    lines += [(f"{row['method']} time, summed over its threads (compute includes waiting for the compute lock): "
               f"read {row['read_s']} s, compute {row['compute_s']} s, write {row['write_s']} s.") for row in ours]
    lines += ["", ("n2vpipe's wall includes model load and OME-Zarr read/write; CAREamics' is CAREamist.predict "
                   "on an in-memory array.")]
    return lines


def write_results(name: str, rows: list[dict[str, Any]], facts: dict[str, Any]) -> None:
    """JSON, a markdown page and a plot: benchmarks/results/<name>.*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = save_results(name, describe(facts), rows, markdown(rows, facts))
    *ours, _ = rows
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [f"{r['method']}\n({r['arithmetic']})" for r in rows]
    colours = ["tab:blue", "tab:cyan"][:len(ours)] + ["tab:orange"]
    left.bar(names, [r["voxels_per_s"] / 1e6 for r in rows], color=colours, label="measured")
    left.scatter(names, [r["ceiling_voxels_per_s"] / 1e6 for r in rows], marker="_", s=2000, color="k",
                 label="ceiling (conv rate / FLOPs per voxel)")
    top = 1.5 * max(r["ceiling_voxels_per_s"] for r in rows) / 1e6
    ratios = ", ".join(f"{r['speed_ratio_over_careamics']:.2f}x" for r in ours)
    left.set(ylabel="M voxels/s", ylim=(0, top),
             title=f"{shape_text(rows[0]['shape'])}, {facts['threads']} threads ({ratios})")
    left.legend(loc="upper center", fontsize=8, markerscale=0.3)
    parts = ("read_s", "compute_s", "write_s")
    width = 0.8 / len(ours)
    for index, row in enumerate(ours):
        right.bar([p + index * width for p in range(len(parts))], [row[part] for part in parts], width,
                  color=colours[index], label=f"{row['method']} ({row['arithmetic']})")
    right.set_xticks([p + width * (len(ours) - 1) / 2 for p in range(len(parts))], ["read", "compute", "write"])
    right.set(ylabel="s (summed over threads)", title="n2vpipe time split")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    main()
