"""Snakemake glue for rule batch_summary: every acquisition's results → the report's summary table (HTML)."""

from pathlib import Path

from n2vpipe.jobs import job_logging
from n2vpipe.summary import acquisition_row, write_summary_html

with job_logging(snakemake.log[0]):
    raw = snakemake.params.raw
    rows = [acquisition_row(acq, Path(snakemake.params.results) / acq, Path(raw[acq])) for acq in sorted(raw)]
    write_summary_html(snakemake.output.html, rows)
