"""The batch summary: one row per acquisition of what a person checks first (results/summary.csv).

Rows are built from the files the pipeline leaves (raw and denoised OME-Zarr, model/model.json,
qc/noise.json, qc/metrics.json, the inference parts' Snakemake benchmark files); a file not there
yet leaves its columns empty and the row's status says how far the acquisition got.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from n2vpipe.io import open_ome_zarr, write_bytes_atomic

COLUMNS = ("acquisition", "status", "shape", "axes", "voxel_size", "noise_std", "noise_verdict", "train_steps",
           "stopped_by", "best_val_loss", "inference_s", "voxels_per_s", "denoised", "flags")


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON at ``path``, ``None`` when it is not there."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def inference_seconds(folder: Path) -> float | None:
    """Wall seconds of the inference parts (sum of the ``s`` column of ``logs/predict_part*.benchmark.tsv``)."""
    files = sorted(Path(folder, "logs").glob("predict_part*.benchmark.tsv"))
    if not files:
        return None
    total = 0.0
    for path in files:
        rows = list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))
        total += float(rows[-1]["s"])
    return total


def noise_columns(noise: Mapping[str, Any] | None) -> dict[str, Any]:
    """Noise std (per channel, ``;``-separated) and the verdict in a few words."""
    if noise is None:
        return {"noise_std": "", "noise_verdict": ""}
    verdict = noise["verdict"]
    if not verdict["correlated"]:
        words = "independent"
    elif verdict["struct_mask"] is None:
        words = "correlated along every axis"
    else:
        words = "correlated " + " ".join(f"{a.upper()}:{n}" for a, n in verdict["axes"].items())
    return {"noise_std": ";".join(f"{c['level']['std_at_median']:.4g}" for c in noise["channels"]),
            "noise_verdict": words}


def acquisition_row(acq: str, folder: Path, raw_zarr: Path) -> dict[str, Any]:
    """The summary row of acquisition ``acq`` whose results are in ``folder`` (its raw copy at ``raw_zarr``)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    row["acquisition"] = acq
    denoised = Path(folder, "denoised.ome.zarr")
    if Path(raw_zarr).exists():
        _, meta = open_ome_zarr(raw_zarr)
        row.update(shape="x".join(map(str, meta.shape)), axes=meta.axes,
                   voxel_size="x".join(f"{s:g}" for s in meta.spatial_scale))
    noise = _read_json(Path(folder, "qc", "noise.json"))
    row.update(noise_columns(noise))
    model = _read_json(Path(folder, "model", "model.json"))
    if model is not None:
        history = model.get("history", {})
        best = history.get("best_val_loss")
        row.update(train_steps=history.get("steps_done", ""), stopped_by=history.get("stopped_by", ""),
                   best_val_loss="" if best is None else f"{best:.4g}")
    seconds = inference_seconds(folder)
    if seconds is not None and denoised.exists():
        _, meta = open_ome_zarr(denoised)
        row["inference_s"] = f"{seconds:.1f}"
        row["voxels_per_s"] = f"{math.prod(meta.shape) / seconds:.4g}" if seconds else ""
    metrics = _read_json(Path(folder, "qc", "metrics.json"))
    flags = list(metrics["flagged"]) if metrics else []
    if noise is not None and noise["verdict"]["correlated"] and not noise["verdict"]["covered_by_config"]:
        flags.insert(0, "correlated_noise")
    row["flags"] = " ".join(flags)
    row["denoised"] = str(denoised) if denoised.exists() else ""
    row["status"] = "done" if metrics is not None and denoised.exists() else "unfinished"
    return row


def write_summary(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as CSV (columns :data:`COLUMNS`) to ``path`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


def summary_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as a standalone HTML page with one table (columns :data:`COLUMNS`), flagged rows highlighted,
    for ``snakemake --report``."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    body = []
    for row in rows:
        attention = row["flags"] or row["status"] != "done"
        cells = "".join(f"<td>{html.escape(str(row[name]))}</td>" for name in COLUMNS)
        body.append(f'<tr class="attention">{cells}</tr>' if attention else f"<tr>{cells}</tr>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>n2vpipe batch summary</title><style>"
            "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}tr.attention{background:#fde2c4}"
            "</style></head><body>\n"
            f"<p>{len(rows)} acquisition(s); highlighted: flagged or unfinished (docs/qc.md)</p>\n"
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table>\n"
            "</body></html>\n")


def write_summary_html(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write :func:`summary_html` of ``rows`` to ``path`` atomically."""
    write_bytes_atomic(path, summary_html(rows).encode())
