"""Snakemake glue for rule export_bioimageio: model/ (+ raw block, QC figure) → model.bioimageio.zip."""

from n2vpipe.bioimageio_export import export_bioimageio
from n2vpipe.jobs import job_logging

with job_logging(snakemake.log[0]):
    export_bioimageio(snakemake.input.raw, snakemake.input.model, snakemake.input.cover, snakemake.output.package,
                      snakemake.wildcards.acq)
