"""structN2V end to end: the noise check's advice, set per acquisition, is taken up by training and the
residual diagnostics report the stripes gone (a real snakemake run of a copy of the workflow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from .conftest import TINY_CONFIG, copy_workflow, output_of, snakemake, write_config

pytestmark = pytest.mark.workflow
ADVICE = [[1, 1, 1, 1, 1]]  # read noise averaged over 3 voxels along X: correlation length 2


def test_noise_check_advice_set_per_acquisition_takes_the_stripes_out(tmp_path: Path) -> None:
    repo = copy_workflow(tmp_path / "repo")
    inputs, results = tmp_path / "in", tmp_path / "results"
    inputs.mkdir()
    rng = np.random.default_rng(11)
    shape = (32, 128, 128)
    read = ndimage.uniform_filter1d(rng.normal(0, 12, shape), 3, axis=2, mode="wrap") * np.sqrt(3)
    tifffile.imwrite(inputs / "striped.tif", (2 * rng.poisson(40, shape) + read + 100).astype(np.float32))
    config = write_config(tmp_path / "site.yaml", inputs, results)
    noise_json = results / "striped" / "qc" / "noise.json"

    first = snakemake(repo, str(noise_json), "--cores", "2", "--configfile", str(config))
    assert first.returncode == 0, output_of(first)
    verdict = json.loads(noise_json.read_text())["verdict"]
    assert verdict["axes"] == {"x": 2} and verdict["struct_mask"] == ADVICE, verdict
    assert "striped: WARNING (qc/noise.json): noise is correlated along X" in first.stdout, output_of(first)

    train = {**TINY_CONFIG["train"], "struct_mask": verdict["struct_mask"]}
    config = write_config(tmp_path / "site.yaml", inputs, results, acquisitions={"striped": {"train": train}})
    second = snakemake(repo, "--cores", "2", "--configfile", str(config))
    assert second.returncode == 0, output_of(second)
    assert "WARNING (qc/noise.json)" not in second.stdout, "the configured mask covers the advice"
    assert json.loads(noise_json.read_text())["verdict"]["covered_by_config"] is True
    model = json.loads((results / "striped" / "model" / "model.json").read_text())
    assert model["training"]["struct_mask"] == ADVICE, "training used the acquisition's mask"
    metrics = json.loads((results / "striped" / "qc" / "metrics.json").read_text())
    channel = metrics["channels"][0]
    assert channel["stripes_gone"] == {"x": True}, channel
    assert "stripes_left" not in metrics["flagged"]
    with open(results / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["noise_verdict"] == "correlated X:2" and "correlated_noise" not in row["flags"].split()
