"""The batch summary row of one acquisition, from the files a finished (or unfinished) run leaves."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from n2vpipe.io import blosc_compressor, create_ome_zarr, open_ome_zarr
from n2vpipe.metrics import check_residual, write_metrics
from n2vpipe.noise import check_noise, write_noise_report
from n2vpipe.summary import COLUMNS, acquisition_row, summary_html, write_summary
from tiny import noisy_raw_zarr, tiny_model

BENCHMARK_TSV = ("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                 "2.0\t0:00:02\t1\t1\t1\t1\t0\t0\t0\t1\n")
"""A Snakemake benchmark file (the columns Snakemake 9 writes) of a 2-second job."""


def test_rows_of_a_finished_and_an_unfinished_acquisition(tmp_path: Path) -> None:
    done = tmp_path / "done"
    done.mkdir()
    raw = noisy_raw_zarr(done, (32, 128, 128), {"z": 16, "y": 64, "x": 64})
    tiny_model(raw, done / "model", {"z": 16, "y": 32, "x": 32}, steps=2)
    _, meta = open_ome_zarr(raw)
    denoised = create_ome_zarr(done / "denoised.ome.zarr", dataclasses.replace(meta, dtype="float32"),
                               (16, 64, 64), blosc_compressor("zstd", 1), "denoised")
    denoised[:] = np.asarray(open_ome_zarr(raw)[0][:], np.float32)
    write_noise_report(done / "qc" / "noise.json", check_noise(raw, 4, 0.002, 0.1, 0))
    write_metrics(done / "qc" / "metrics.json", check_residual(raw, done / "denoised.ome.zarr",
                                                               done / "qc" / "noise.json", 4, 0.002, 0.1, 0))
    (done / "logs").mkdir()
    for part in range(2):
        (done / "logs" / f"predict_part{part}-of-2.benchmark.tsv").write_text(BENCHMARK_TSV)
    row = acquisition_row("done", done, raw)
    assert row["status"] == "done" and row["shape"] == "32x128x128" and row["axes"] == "zyx"
    assert row["train_steps"] == 2 and row["stopped_by"] == "steps"
    assert row["inference_s"] == "4.0" and row["voxels_per_s"] == f"{32 * 128 * 128 / 4:.4g}"
    assert row["noise_verdict"] == "independent" and float(row["noise_std"]) > 0
    assert row["denoised"] == str(done / "denoised.ome.zarr")
    assert "residual_structure" not in row["flags"]  # denoised == raw: the residual is 0

    missing = acquisition_row("broken", tmp_path / "broken", tmp_path / "broken" / "raw.ome.zarr")
    assert missing["status"] == "unfinished" and missing["shape"] == "" and missing["flags"] == ""
    write_summary(tmp_path / "summary.csv", [row, missing])
    with open(tmp_path / "summary.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert tuple(read[0]) == COLUMNS and [r["acquisition"] for r in read] == ["done", "broken"]


def test_summary_page_escapes_cells_and_highlights_rows_that_need_a_look() -> None:
    rows = [{**dict.fromkeys(COLUMNS, ""), "acquisition": "a<b", "status": "done"},
            {**dict.fromkeys(COLUMNS, ""), "acquisition": "c", "status": "done", "flags": "checkerboard"},
            {**dict.fromkeys(COLUMNS, ""), "acquisition": "d", "status": "unfinished"}]
    page = summary_html(rows)
    assert "<td>a&lt;b</td>" in page and "a<b" not in page
    assert page.count('<tr class="attention">') == 2 and page.count("<tr>") == 2, "header and the quiet row"
