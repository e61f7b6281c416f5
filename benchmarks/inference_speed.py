"""Inference speed on CPU: n2vpipe's predict_volume against CAREamics tiled prediction, side by side.

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
actually computed (counted at the first convolution) over output voxels; and n2vpipe's
read/compute/write split. Writes results/inference_speed.json, .md and .png.

    python benchmarks/inference_speed.py [--shape 64x512x512] [--block 32x256x256] [--repeats 2]
        [--threads 2] [--careamics-python /tmp/careamics-venv/bin/python] [--quick]
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
from common import cpu_model, parse_shape, save_results, schema_default, shape_text
from torch.utils.flop_counter import FlopCounterMode

from n2vpipe.ingest import ingest_tiff
from n2vpipe.model_io import ModelDescription, Normalisation, save_model
from n2vpipe.predict import fuse_batch_norm, halo_on_grid
from n2vpipe.unet import (
    UNet,
    UNetSpec,
    memory_format,
)

DEFAULT_CAREAMICS_PYTHON = "/tmp/careamics-venv/bin/python"
SPEC = UNetSpec(ndim=3, depth=2, base_filters=32)
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
from n2vpipe.predict import predict_volume
args = json.loads(sys.argv[1])
block = dict(zip("zyx", args["block"]))
start = time.perf_counter()
stats = predict_volume(args["raw"], args["model"], args["dst"], block, threads=args["threads"], device="cpu")
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "blocks": stats.blocks, "voxels": stats.voxels, "read_s": stats.read_s,
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


def conv_rate(model: torch.nn.Module, tile: tuple[int, ...], per_voxel: float, repeats: int = 2) -> float:
    """FLOP/s of the fused, channels-last ``model`` on one ``tile`` (best of ``repeats``; the first warms up)."""
    x = torch.randn(1, 1, *tile).to(memory_format=memory_format(len(tile)))
    best = math.inf
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return per_voxel * math.prod(tile) / best


def rate_tile(block: tuple[int, int, int]) -> tuple[int, ...]:
    """What n2vpipe feeds its network for a block inside the volume: the block plus its halo on both sides."""
    return tuple(b + 2 * h for b, h in zip(block, halo_on_grid(SPEC)))


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
    meta = ingest_tiff(folder / "volume.tif", folder / "raw.ome.zarr", dict(zip("zyx", block)))
    torch.manual_seed(0)
    save_model(UNet(SPEC), ModelDescription(SPEC, Normalisation((mean,), (std,)), meta.spatial_axes), folder / "model")
    return mean, std


def run_n2vpipe(folder: Path, block: tuple[int, int, int], threads: int, index: int) -> dict[str, Any]:
    """One predict_volume run in a fresh process."""
    return worker(sys.executable, N2VPIPE, {"raw": str(folder / "raw.ome.zarr"), "model": str(folder / "model"),
                                            "dst": str(folder / f"out-{index}.ome.zarr"), "block": list(block),
                                            "threads": threads})


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
    parser.add_argument("--careamics-python", default=DEFAULT_CAREAMICS_PYTHON)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny volume, block and tiles, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.block, args.tile, args.overlap = (8, 64, 128), (8, 64, 64), (8, 64, 64), (4, 16, 16)
        args.repeats = 1
    args.block = args.block or tuple(schema_default("predict", "block")[a] for a in "zyx")
    return args


def measure_network(block: tuple[int, int, int], tile: tuple[int, int, int]) -> tuple[float, tuple[int, ...], float]:
    """n2vpipe's FLOPs per voxel (on one CAREamics-sized tile), the tile it computes per block, and the
    conv3d rate (FLOP/s) of its fused, channels-last network on that tile."""
    model = fuse_batch_norm(UNet(SPEC).eval()).to(memory_format=memory_format(SPEC.ndim))
    per_voxel = flops_per_voxel(model, tile)
    big_tile = rate_tile(block)
    return per_voxel, big_tile, conv_rate(model, big_tile, per_voxel)


def run_interleaved(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prepare the inputs, then run n2vpipe and CAREamics alternately, ``args.repeats`` times each."""
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mean, std = prepare(folder, args.shape, args.block)
        for index in range(args.repeats):
            ours.append(run_n2vpipe(folder, args.block, args.threads, index))
            print("n2vpipe", ours[-1], flush=True)
            theirs.append(worker(args.careamics_python, CAREAMICS,
                                 careamics_args(args, folder, mean, std, flops=index == 0)))
            print("careamics", theirs[-1], flush=True)
    return ours, theirs


def build_rows(args: argparse.Namespace, ours_runs: list[dict[str, Any]], theirs_runs: list[dict[str, Any]],
               per_voxel: float, big_tile: tuple[int, ...], rate: float) -> tuple[list[dict[str, Any]], float]:
    """One row per method (best runs) and the n2vpipe / CAREamics voxels/s ratio."""
    ours, theirs, first = best(ours_runs), best(theirs_runs), theirs_runs[0]
    if theirs["output_shape"] != list(args.shape):
        raise RuntimeError(f"CAREamics returned shape {theirs['output_shape']}, expected {list(args.shape)}")
    voxels = math.prod(args.shape)
    params = sum(p.numel() for p in UNet(SPEC).parameters())
    rows = [method_row("n2vpipe", ours, voxels, per_voxel, rate, params),
            method_row("careamics", theirs, voxels, first["flops_per_voxel"], rate, first["params"])]
    rows[0].update(block=list(args.block), blocks=ours["blocks"], read_s=round(ours["read_s"], 2),
                   compute_s=round(ours["compute_s"], 2), write_s=round(ours["write_s"], 2))
    rows[1].update(tile=list(args.tile), overlap=list(args.overlap), tiles=theirs["tiles"],
                   batch_size=args.careamics_batch_size, dataloader_workers=theirs["num_workers"])
    ratio = rows[0]["voxels_per_s"] / rows[1]["voxels_per_s"]
    for row in rows:
        row.update(shape=list(args.shape), conv_rate_GFLOP_s=round(rate / 1e9, 1), rate_tile=list(big_tile),
                   speed_ratio_n2vpipe_over_careamics=round(ratio, 2))
    return rows, ratio


def main() -> None:
    """Measure, print and write the results."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    facts = machine_facts(args.threads)
    per_voxel, big_tile, rate = measure_network(args.block, args.tile)
    print(f"conv3d rate {rate / 1e9:.1f} GFLOP/s on {big_tile}; n2vpipe {per_voxel / 1e3:.0f} kFLOP/voxel", flush=True)
    ours_runs, theirs_runs = run_interleaved(args)
    rows, ratio = build_rows(args, ours_runs, theirs_runs, per_voxel, big_tile, rate)
    facts.update(torch_careamics=theirs_runs[0]["torch"], careamics=theirs_runs[0]["careamics"],
                 uptime_after=command_output("uptime"))
    for row in rows:
        print(row)
    print(f"n2vpipe / CAREamics voxels/s: {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x)")
    write_results(rows, facts, ratio)


def describe(facts: dict[str, Any]) -> str:
    """One line naming the machine, software and load."""
    return (f"{facts['cpu']} ({facts['cpus']} CPUs), {facts['threads']} threads; torch {facts['torch_n2vpipe']} "
            f"(n2vpipe), torch {facts['torch_careamics']} + CAREamics {facts['careamics']}; "
            f"uptime before: {facts['uptime_before']}; after: {facts['uptime_after']}")


def table_row(row: dict[str, Any], tiling: str, rss: str) -> str:
    """One markdown table line for a method."""
    cells = [row["method"], tiling, f"{row['wall_s']} ({row['all_wall_s']})", row["voxels_per_s"], rss,
             row["flops_per_voxel"], row["ceiling_voxels_per_s"], row["fraction_of_ceiling"], row["halo_overhead"]]
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(rows: list[dict[str, Any]], facts: dict[str, Any], ratio: float) -> list[str]:
    """The results page: machine, table, ratio, conv rate and n2vpipe's time split."""
    ours, theirs = rows
    header = ("| method | tiling | best wall s (all) | voxels/s | peak RSS MiB | FLOPs/voxel | ceiling voxels/s "
              "| fraction of ceiling | computed/output voxels |")
    ratio_line = (f"n2vpipe / CAREamics voxels/s: **{ratio:.2f}x** (target >= {TARGET_RATIO:.0f}x). Conv3d rate: "
                  f"{ours['conv_rate_GFLOP_s']} GFLOP/s (n2vpipe network, fused BatchNorm, channels-last, one "
                  f"{shape_text(ours['rate_tile'])} tile); ceiling = rate / FLOPs per output voxel.")
    split_line = (f"n2vpipe time, summed over its threads (compute includes waiting for the compute lock): read "
                  f"{ours['read_s']} s, compute {ours['compute_s']} s, write {ours['write_s']} s. n2vpipe's wall "
                  "includes model load and OME-Zarr read/write; CAREamics' is CAREamist.predict on an in-memory array.")
    title = (f"# Inference speed on CPU: n2vpipe vs CAREamics ({shape_text(ours['shape'])} uint16, "
             "random-init U-Net depth 2, 32 filters)")
    return [title, "", describe(facts), "", header, "|---" * 9 + "|",
            table_row(ours, f"block {shape_text(ours['block'])} + halo, {ours['blocks']} blocks",
                      str(ours["peak_rss_MiB"])),
            table_row(theirs, f"tile {shape_text(theirs['tile'])}, overlap {shape_text(theirs['overlap'])}, "
                              f"{theirs['tiles']} tiles, batch {theirs['batch_size']}",
                      f"{theirs['peak_rss_MiB']} (+ {theirs['dataloader_workers']} loader process(es), not counted)"),
            "", ratio_line, "", split_line]


def write_results(rows: list[dict[str, Any]], facts: dict[str, Any], ratio: float) -> None:
    """JSON, a markdown page and a plot under benchmarks/results/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = save_results("inference_speed", describe(facts), rows, markdown(rows, facts, ratio))
    ours = rows[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    names = [r["method"] for r in rows]
    left.bar(names, [r["voxels_per_s"] / 1e6 for r in rows], color=["tab:blue", "tab:orange"], label="measured")
    left.scatter(names, [r["ceiling_voxels_per_s"] / 1e6 for r in rows], marker="_", s=2000, color="k",
                 label="ceiling (conv rate / FLOPs per voxel)")
    top = 1.5 * max(r["ceiling_voxels_per_s"] for r in rows) / 1e6
    left.set(ylabel="M voxels/s", ylim=(0, top),
             title=f"{shape_text(ours['shape'])}, {facts['threads']} threads ({ratio:.2f}x)")
    left.legend(loc="upper center", fontsize=8, markerscale=0.3)
    parts = {"read": ours["read_s"], "compute": ours["compute_s"], "write": ours["write_s"]}
    right.bar(list(parts), list(parts.values()), color="tab:blue")
    right.set(ylabel="s (summed over threads)", title="n2vpipe time split")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    main()
