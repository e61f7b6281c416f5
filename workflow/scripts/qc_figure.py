"""Snakemake glue for rule qc_figure: raw and denoised central planes side by side."""

from n2vpipe.jobs import job_logging
from n2vpipe.qc import comparison_figure

with job_logging(snakemake.log[0]):
    comparison_figure(snakemake.input.raw, snakemake.input.denoised, snakemake.output.png)
