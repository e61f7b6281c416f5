"""Snakemake glue for rule qc_metrics: raw and denoised OME-Zarr → qc/metrics.json."""

from n2vpipe.jobs import job_logging
from n2vpipe.metrics import check_residual, write_metrics

with job_logging(snakemake.log[0]):
    qc = snakemake.params.qc
    metrics = check_residual(snakemake.input.raw, snakemake.input.denoised, snakemake.input.noise,
                             qc["sample_blocks"], qc["sample_fraction"], qc["correlation_threshold"], qc["seed"])
    write_metrics(snakemake.output.json, metrics)
