"""Inference killed half-way (SIGKILL) and rerun computes only the missing blocks, with identical output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from n2vpipe.io import open_ome_zarr, partial_path
from n2vpipe.predict import DONE_DIR, PredictConfig, predict_volume
from tiny import noisy_raw_zarr, tiny_model

BLOCK = {"z": 8, "y": 16, "x": 16}
CONFIG = PredictConfig(block=BLOCK, pyramid_levels=1)
PREDICT = "from n2vpipe.predict import PredictConfig, predict_volume; import sys; " \
          "predict_volume(sys.argv[1], sys.argv[2], sys.argv[3], " \
          "PredictConfig(block={'z': 8, 'y': 16, 'x': 16}, pyramid_levels=1), threads=1)"


def test_killed_prediction_resumes_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    raw = noisy_raw_zarr(tmp_path, (16, 64, 64), {"z": 8, "y": 16, "x": 16})
    tiny_model(raw, tmp_path / "model", {"z": 8, "y": 16, "x": 16})
    reference = tmp_path / "reference.ome.zarr"
    predict_volume(raw, tmp_path / "model", reference, CONFIG)

    killed = tmp_path / "denoised.ome.zarr"
    done_dir = partial_path(killed) / DONE_DIR
    process = subprocess.Popen([sys.executable, "-c", PREDICT, str(raw), str(tmp_path / "model"), str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not done_dir.exists() or len(os.listdir(done_dir)) < 8):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before_kill = len(os.listdir(done_dir))
    assert 8 <= finished_before_kill < 32, finished_before_kill
    assert not killed.exists(), "a killed run must leave nothing that looks finished"

    computed = predict_volume(raw, tmp_path / "model", killed, CONFIG).blocks
    assert computed == 32 - finished_before_kill
    assert np.array_equal(open_ome_zarr(killed)[0][:], open_ome_zarr(reference)[0][:])
