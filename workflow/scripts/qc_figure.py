"""Snakemake glue for rule qc_figure: raw, denoised and residual views through the centre, with the QC numbers."""

from n2vpipe.jobs import job_logging
from n2vpipe.qc import comparison_figure

with job_logging(snakemake.log[0]):
    comparison_figure(snakemake.input.raw, snakemake.input.denoised, snakemake.input.noise, snakemake.input.metrics,
                      snakemake.output.png)
