"""Snakemake glue for rule import_model: config model: (folder or package) → imported_model/."""

from n2vpipe.jobs import job_logging
from n2vpipe.model_import import import_model

with job_logging(snakemake.log[0]):
    import_model(snakemake.input.source, snakemake.input.zarr, snakemake.output.model)
