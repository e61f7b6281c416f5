"""Training speed on CPU: n2vpipe's train_n2v against CAREamics N2V, side by side.

Both train a 3D U-Net of depth 2 with 32 initial filters and BatchNorm on 16x64x64 patches,
batch 8, from the same synthetic noisy uint16 volume, with the same number of torch threads,
each run in a fresh process, runs interleaved over rounds. CAREamics runs in its own
interpreter (--careamics-python; CAREamist API with its defaults otherwise: Adam, N2V
masking of 0.2% of the pixels within an 11-wide ROI, flips and 90-degree rotations, its
default number of DataLoader worker processes) and is never imported here. n2vpipe runs twice:
with its default precision (``auto``: bfloat16 autocast on CPUs with AMX, float32 elsewhere) and
as ``n2vpipe-float32``, CAREamics' arithmetic. A fourth contender, n2vpipe in float32 run by
CAREamics' interpreter (``n2vpipe@careamics-torch``), tells the torch version apart from the
code when the two environments carry different torch releases.

Steady-state steps/s is measured over --steps intervals between consecutive training steps
after --warmup steps (CAREamics: a Lightning callback at each batch end, within one epoch; n2vpipe: the moment
each step's loss is computed), so start-up, validation and checkpoints are not counted; each
interval is a whole step (data, masking, forward, backward, optimiser). The two U-Nets differ
in layout (CAREamics: narrower bottleneck and decoder, trilinear upsampling; n2vpipe: nearest
upsampling fused into the next convolution), so parameters and forward FLOPs per batch are
counted for both. Other users of the CPU slow every run: the load averages around each run
are recorded and the median run per contender is reported.

``--profile`` adds one in-process n2vpipe run under cProfile and torch.profiler: where a
step's time goes (patch sampling, augmentation, masking, forward, backward, optimiser) and
the heaviest torch operators. Writes results/training_speed.json, .md and .png.

    python benchmarks/training_speed.py [--rounds 3] [--steps 8] [--warmup 3] [--threads 2]
        [--careamics-python /tmp/careamics-venv/bin/python] [--profile] [--quick]
        [--name training_speed]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from common import cpu_model, load_average, parse_shape, run_worker, save_results
from n2vpipe.ingest import ingest_tiff

SRC = Path(__file__).resolve().parents[1] / "src"
DEFAULT_CAREAMICS_PYTHON = "/tmp/careamics-venv/bin/python"
TARGET_RATIO = 1.3

CAREAMICS = """
import copy, json, sys, tempfile, time
import numpy as np, torch
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode
import careamics
from careamics import CAREamist
from careamics.config import create_n2v_config

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])


class StepClock(Callback):
    def __init__(self, total):
        self.total, self.stamps = total, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stamps.append([trainer.current_epoch, time.perf_counter()])
        if len(self.stamps) >= self.total:
            trainer.should_stop = True


config = create_n2v_config("speed", data_type="array", axes="ZYX", patch_size=args["patch"],
                           batch_size=args["batch"], num_epochs=1000)
clock = StepClock(args["warmup"] + args["steps"] + 1)
with tempfile.TemporaryDirectory() as work:
    careamist = CAREamist(config, work_dir=work, callbacks=[clock], enable_progress_bar=False)
    careamist.train(train_data=np.load(args["volume"]).astype(np.float32))
net = careamist.model.model
with FlopCounterMode(display=False) as counter, torch.no_grad():
    copy.deepcopy(net).to("meta")(torch.empty(args["batch"], 1, *args["patch"], device="meta"))
print("RESULT " + json.dumps({
    "stamps": clock.stamps, "parameters": sum(p.numel() for p in net.parameters()),
    "forward_flops": counter.get_total_flops(), "torch": torch.__version__,
    "version": careamics.__version__, "threads": torch.get_num_threads(),
    "dataloader_workers": config.data_config.train_dataloader_params.get("num_workers", 0)}))
"""

N2VPIPE = """
import json, sys, tempfile, time
from pathlib import Path
import torch
from torch.utils.flop_counter import FlopCounterMode
import n2vpipe
import n2vpipe.train as train
from n2vpipe.unet import UNet, parameter_count

args = json.loads(sys.argv[1])
if not hasattr(train, "masked_loss"):
    raise SystemExit("n2vpipe.train.masked_loss is gone: update the step clock in training_speed.py")
stamps, loss = [], train.masked_loss


def clocked_loss(*loss_args, **loss_kwargs):
    stamps.append([0, time.perf_counter()])
    return loss(*loss_args, **loss_kwargs)


train.masked_loss = clocked_loss
config = train.TrainConfig(patch=dict(zip("zyx", args["patch"])), batch_size=args["batch"],
                           steps=args["warmup"] + args["steps"] + 1, depth=2, base_filters=32, batch_norm=True,
                           pooling=[[2, 2, 2], [2, 2, 2]], validation_fraction=0.0,
                           validate_every=10**9, checkpoint_every=10**9, device="cpu",
                           precision=args.get("precision", "auto"))
with tempfile.TemporaryDirectory() as work:
    description = train.train_n2v(Path(args["zarr"]), Path(work) / "model", config, threads=args["threads"])
net = UNet(description.spec)
with FlopCounterMode(display=False) as counter, torch.no_grad():
    net.to("meta")(torch.empty(args["batch"], 1, *args["patch"], device="meta"))
print("RESULT " + json.dumps({
    "stamps": stamps, "parameters": parameter_count(UNet(description.spec)),
    "forward_flops": counter.get_total_flops(), "torch": torch.__version__,
    "version": n2vpipe.__version__, "threads": torch.get_num_threads(), "dataloader_workers": 0,
    "arithmetic": description.training["arithmetic"]}))
"""

PROFILE = """
import cProfile, json, pstats, sys, tempfile
from pathlib import Path
import torch
from torch.profiler import ProfilerActivity, profile
import n2vpipe.train as train

args = json.loads(sys.argv[1])
config = train.TrainConfig(patch=dict(zip("zyx", args["patch"])), batch_size=args["batch"], steps=args["steps"],
                           depth=2, base_filters=32, batch_norm=True, pooling=[[2, 2, 2], [2, 2, 2]],
                           validation_fraction=0.0,
                           validate_every=10**9, checkpoint_every=10**9, device="cpu")
profiler = cProfile.Profile()
with tempfile.TemporaryDirectory() as work, profile(activities=[ProfilerActivity.CPU]) as ops:
    profiler.enable()
    train.train_n2v(Path(args["zarr"]), Path(work) / "model", config, threads=args["threads"])
    profiler.disable()
stats = pstats.Stats(profiler).stats
parts = {"sample patches": ("train.py", "sample"), "augment": ("train.py", "augment"),
         "mask + tensors": ("train.py", "_masked_tensors"), "forward": ("unet.py", "forward"),
         "backward": ("_tensor.py", "backward"), "optimiser": ("adam.py", "step"),
         "whole loop": ("train.py", "_run_steps")}
split = {}
for name, (file, function) in parts.items():
    split[name] = max((row[3] for (path, _, func), row in stats.items()
                       if path.endswith(file) and func == function), default=0.0) / args["steps"]
table = [[e.key, e.self_cpu_time_total / 1e6 / args["steps"], e.count // args["steps"]]
         for e in sorted(ops.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]]
print("RESULT " + json.dumps({"seconds_per_step": split, "top_ops": table}))
"""


def make_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Blocky structure (random levels on a coarse grid) under Poisson noise, as uint16."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((max(1, shape[0] // 8), max(1, shape[1] // 16), max(1, shape[2] // 16)))
    fine = coarse.repeat(8, 0).repeat(16, 1).repeat(16, 2)
    fine = np.pad(fine, [(0, max(0, s - f)) for s, f in zip(shape, fine.shape, strict=True)], mode="edge")
    signal = 20 + 200 * fine[: shape[0], : shape[1], : shape[2]]
    return rng.poisson(signal).astype(np.uint16)


def steady_rate(stamps: list[list[float]], warmup: int) -> tuple[float, int]:
    """Steps/s over the intervals between consecutive steps after ``warmup``, within an epoch; and their count."""
    intervals = [b[1] - a[1] for a, b in itertools.pairwise(stamps[warmup:]) if a[0] == b[0]]
    if not intervals:
        raise RuntimeError(f"no steady-state intervals in {len(stamps)} steps with warm-up {warmup}")
    return len(intervals) / sum(intervals), len(intervals)


def contenders(careamics_python: str) -> dict[str, tuple[str, str, dict[str, str], dict[str, str]]]:
    """Name -> (interpreter, worker code, environment, extra job settings) for every contender.

    ``n2vpipe`` runs with its default precision (``auto``: bfloat16 on AMX CPUs), ``n2vpipe-float32``
    with CAREamics' arithmetic."""
    ours = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    theirs = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {
        "CAREamics": (careamics_python, CAREAMICS, theirs, {}),
        "n2vpipe": (sys.executable, N2VPIPE, ours, {}),
        "n2vpipe-float32": (sys.executable, N2VPIPE, ours, {"precision": "float32"}),
        "n2vpipe@careamics-torch": (careamics_python, N2VPIPE, ours, {"precision": "float32"}),
    }


def parse_args() -> argparse.Namespace:
    """Command line; ``--quick`` shrinks volume, patch, batch and step counts to a smoke test."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64x512x512", help="synthetic volume, ZxYxX")
    parser.add_argument("--patch", default="16x64x64")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run, after the warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="training_speed", help="results/<name>.json, .md, .png")
    parser.add_argument("--careamics-python", default=DEFAULT_CAREAMICS_PYTHON)
    parser.add_argument("--profile", action="store_true", help="also profile n2vpipe's step")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny volume and patches, one round")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.patch, args.batch, args.rounds, args.steps, args.warmup = "32x128x128", "8x32x32", 2, 1, 3, 1
    return args


def main() -> None:
    args = parse_args()
    patch = list(parse_shape(args.patch))
    workers = contenders(args.careamics_python)
    runs: list[dict[str, Any]] = []
    profile = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        volume = make_volume(parse_shape(args.shape))
        np.save(folder / "volume.npy", volume)
        tifffile.imwrite(folder / "volume.tif", volume)
        ingest_tiff(folder / "volume.tif", folder / "raw.ome.zarr", {"z": 32, "y": 128, "x": 128})
        job = {"volume": str(folder / "volume.npy"), "zarr": str(folder / "raw.ome.zarr"), "patch": patch,
               "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "threads": args.threads}
        names = list(workers)
        for round_index in range(args.rounds):
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                python, code, env, settings = workers[name]
                before, start = load_average(), time.perf_counter()
                result = run_worker([python, "-c", code, json.dumps({**job, **settings})], env)
                rate, intervals = steady_rate(result.pop("stamps"), args.warmup)
                runs.append({"method": name, "round": round_index, "steps_per_s": rate, "timed_intervals": intervals,
                             "wall_s": round(time.perf_counter() - start, 1), "load_before": before,
                             "load_after": load_average(), **result})
                print(f"round {round_index} {name}: {rate:.4f} steps/s, load {before} -> {runs[-1]['load_after']}",
                      flush=True)
        if args.profile:
            profile_job = json.dumps({**job, "steps": args.warmup + args.steps})
            profile = run_worker([sys.executable, "-c", PROFILE, profile_job], workers["n2vpipe"][2])
    facts = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "volume": args.shape,
             "patch": args.patch, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
             "rounds": args.rounds, "quick": args.quick}
    write_results(args.name, runs, summarise(runs), facts, profile)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per contender: median, min and max steps/s, and the facts its runs share."""
    rows = []
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        rates = [r["steps_per_s"] for r in mine]
        first = mine[0]
        rows.append({"method": name, "median_steps_per_s": statistics.median(rates), "min_steps_per_s": min(rates),
                     "max_steps_per_s": max(rates), "runs": len(mine), "parameters": first["parameters"],
                     "forward_gflop_per_batch": round(first["forward_flops"] / 1e9, 1), "torch": first["torch"],
                     "version": first["version"], "threads": first["threads"],
                     "dataloader_workers": first["dataloader_workers"],
                     "arithmetic": first.get("arithmetic", "float32")})
    return rows


def describe(facts: dict[str, Any]) -> str:
    """One line naming the machine and the setting."""
    quick = ", QUICK SMOKE TEST" if facts["quick"] else ""
    return (f"{facts['cpu']}, {facts['cores']} cores, {facts['threads']} torch threads per run; "
            f"patch {facts['patch']}, batch {facts['batch']}, volume {facts['volume']}{quick}")


def markdown(summary: list[dict[str, Any]], runs: list[dict[str, Any]], facts: dict[str, Any],
             profile: dict[str, Any] | None) -> list[str]:
    """The results page: summary table, ratio against the target, every run with its load, the profile."""
    by_name = {row["method"]: row for row in summary}
    reference = by_name["CAREamics"]["median_steps_per_s"]
    lines = [f"# Training speed: n2vpipe vs CAREamics ({describe(facts)})", ""]
    for name in ("n2vpipe", "n2vpipe-float32"):
        if name in by_name:
            ratio = by_name[name]["median_steps_per_s"] / reference
            verdict = "meets" if ratio >= TARGET_RATIO else "misses"
            lines.append(f"{name} ({by_name[name]['arithmetic']}) / CAREamics (float32) steady-state steps/s "
                         f"(medians): **{ratio:.2f}x** ({verdict} the {TARGET_RATIO}x target).")
    lines += ["", (f"Runs interleaved, {facts['rounds']} rounds, {facts['steps']} timed steps after "
                   f"{facts['warmup']} warm-up steps per run."), "",
              ("| method | arithmetic | steps/s (median) | min | max | patches/s | parameters | forward GFLOP/batch | "
               "torch | DataLoader workers |"), "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} {r['version']} | {r['arithmetic']} | {r['median_steps_per_s']:.4f} | "
              f"{r['min_steps_per_s']:.4f} | {r['max_steps_per_s']:.4f} | "
              f"{r['median_steps_per_s'] * facts['batch']:.3f} | "
              f"{r['parameters']:,} | {r['forward_gflop_per_batch']} | {r['torch']} | {r['dataloader_workers']} |"
              for r in summary]
    lines += ["", "Every run, in order (load averages 1/5/15 min before and after; the CPU is shared):", "",
              "| round | method | steps/s | timed steps | wall s | load before | load after |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['method']} | {r['steps_per_s']:.4f} | {r['timed_intervals']} | {r['wall_s']} | "
              f"{' '.join(map(str, r['load_before']))} | {' '.join(map(str, r['load_after']))} |" for r in runs]
    if profile:
        lines += ["", "n2vpipe, seconds per step by part (cProfile, inclusive, averaged over all steps including "
                  "warm-up; under profiling):", "",
                  "| part | s/step |", "|---|---|"]
        lines += [f"| {name} | {seconds:.3f} |" for name, seconds in profile["seconds_per_step"].items()]
        lines += ["", "Heaviest torch operators (torch.profiler, self CPU time summed over threads):", "",
                  "| operator | s/step | calls/step |", "|---|---|---|"]
        lines += [f"| {name} | {seconds:.3f} | {calls} |" for name, seconds, calls in profile["top_ops"]]
    return lines


def write_results(name: str, runs: list[dict[str, Any]], summary: list[dict[str, Any]], facts: dict[str, Any],
                  profile: dict[str, Any] | None) -> None:
    """JSON, a markdown page and a plot: benchmarks/results/<name>.*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"summary": summary, "runs": runs, "profile": profile, "setting": facts}]
    png = save_results(name, describe(facts), rows, markdown(summary, runs, facts, profile))
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [f"{r['method']}\n({r['arithmetic']})" for r in summary]
    colours = ["tab:orange", "tab:blue", "tab:green", "tab:cyan"][:len(names)]
    ax.bar(names, [r["median_steps_per_s"] for r in summary], color=colours, label="median")
    for index in range(len(names)):
        rates = [r["steps_per_s"] for r in runs if r["method"] == summary[index]["method"]]
        ax.scatter([index] * len(rates), rates, color="k", s=12, zorder=3, label="runs" if index == 0 else None)
    ax.set(ylabel="training steps/s", ylim=(0, None),
           title=f"patch {facts['patch']}, batch {facts['batch']}, {facts['threads']} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    main()
