"""Snakemake glue for rule noise_check: raw OME-Zarr → qc/noise.json and qc/noise.png."""

from n2vpipe.jobs import job_logging
from n2vpipe.noise import check_noise, write_noise_report
from n2vpipe.qc import noise_figure

with job_logging(snakemake.log[0]):
    qc = snakemake.params.qc
    report = check_noise(snakemake.input.zarr, qc["sample_blocks"], qc["sample_fraction"], qc["correlation_threshold"],
                         qc["seed"], snakemake.params.struct_mask)
    write_noise_report(snakemake.output.json, report)
    noise_figure(report, snakemake.output.png)
