"""CAREamics worker for quality_poisson_gaussian.py: train N2V or N2V2 for a wall-clock budget, then predict.

Run by CAREamics' own interpreter (it is never imported by the benchmark), one job per process:

    /tmp/careamics-venv/bin/python benchmarks/quality_careamics_worker.py '<job as JSON>'

The job names the noisy volume (``src``, .npy, ZYX), where to write the float32 prediction (``dst``),
a work folder, ``n2v2``, the budget in ``seconds``, torch ``threads``, ``patch``, ``batch``, and
``tile``/``overlap`` for prediction (null: the whole volume at once). Everything else is
``create_n2v_config``'s default but two things. The budget is Lightning's ``max_time`` trainer
parameter (its Timer checks it after every training step), with an epoch count no run reaches.
Validation patches: CAREamics holds out ``n_val_patches`` (default 8) of the volume's patches on a
patch-sized grid and fails unless fewer than all are held out, which a 32x128x128 volume (8 patches
of 16x64x64) cannot satisfy; so the default is capped at a tenth of the patches (at least 1, like
n2vpipe's validation_fraction 0.1), and a volume of a single patch is validated on itself
(``val_data``). Validation only feeds CAREamics' learning-rate schedule: N2V predicts with the last
weights. Prediction uses the weights training ended with (saved to a checkpoint, as
CAREamist.predict loads one). Prints one line ``RESULT {json}``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import careamics
import numpy as np
import torch
from careamics import CAREamist
from careamics.config import create_n2v_config

NO_EPOCH_LIMIT = 1_000_000
DEFAULT_VAL_PATCHES = 8


def validation_patches(shape: tuple[int, ...], patch: list[int]) -> int:
    """Patches to hold out: the default capped at a tenth of the grid CAREamics samples from (0: none can be)."""
    grid = math.prod((s + 1) // p for s, p in zip(shape, patch, strict=True))
    return 0 if grid < 2 else min(DEFAULT_VAL_PATCHES, max(1, round(grid / 10)))


def train(job: dict[str, Any], noisy: np.ndarray) -> tuple[CAREamist, dict[str, Any]]:
    """Train with CAREamics' N2V defaults until the budget runs out; return the CAREamist and what it did."""
    held_out = validation_patches(noisy.shape, job["patch"])
    config = create_n2v_config("quality", data_type="array", axes="ZYX", patch_size=job["patch"],
                               batch_size=job["batch"], num_epochs=NO_EPOCH_LIMIT, use_n2v2=job["n2v2"],
                               n_val_patches=held_out or DEFAULT_VAL_PATCHES)
    config.training_config.trainer_params = {**config.training_config.trainer_params,
                                             "max_time": {"seconds": job["seconds"]}}
    careamist = CAREamist(config, work_dir=job["work_dir"], enable_progress_bar=False)
    start = time.perf_counter()
    careamist.train(train_data=noisy, val_data=None if held_out else noisy)
    trainer = careamist.trainer
    return careamist, {
        "train_s": time.perf_counter() - start, "steps": trainer.global_step, "epochs": trainer.current_epoch,
        "dataloader_workers": trainer.train_dataloader.num_workers,
        "validation": f"{held_out} validation patches held out" if held_out else "validated on the training volume"}


def predict(careamist: CAREamist, job: dict[str, Any], noisy: np.ndarray) -> tuple[np.ndarray, float]:
    """Predict the whole volume with the weights training ended with; return it (float32) and the wall time."""
    final = Path(job["work_dir"]) / "final.ckpt"
    careamist.trainer.save_checkpoint(final)
    tile = tuple(job["tile"]) if job["tile"] else None
    overlap = tuple(job["overlap"]) if job["overlap"] else None
    start = time.perf_counter()
    predictions, _ = careamist.predict(noisy, tile_size=tile, tile_overlap=overlap, axes="ZYX", data_type="array",
                                       checkpoint=final)
    return np.squeeze(predictions[0]).astype(np.float32), time.perf_counter() - start


def main() -> None:
    """Run the job given as JSON in the first argument."""
    job = json.loads(sys.argv[1])
    torch.set_num_threads(job["threads"])
    noisy = np.load(job["src"]).astype(np.float32)
    careamist, facts = train(job, noisy)
    denoised, predict_s = predict(careamist, job, noisy)
    if denoised.shape != noisy.shape:
        raise RuntimeError(f"CAREamics returned shape {denoised.shape}, expected {noisy.shape}")
    np.save(job["dst"], denoised)
    print("RESULT " + json.dumps({**facts, "predict_s": predict_s, "careamics": careamics.__version__,
                                  "torch": torch.__version__}))


if __name__ == "__main__":
    main()
