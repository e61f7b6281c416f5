"""Snakemake glue for rule ingest: TIFF → raw.ome.zarr."""

from n2vpipe.ingest import ingest_tiff
from n2vpipe.jobs import job_logging

with job_logging(snakemake.log[0]):
    settings = snakemake.params.settings
    ingest_tiff(
        snakemake.input.raw,
        snakemake.output.zarr,
        spatial_chunks=settings["chunks"],
        compressor=settings["compressor"],
        compression_level=settings["compression_level"],
        pyramid_levels=settings["pyramid_levels"],
        threads=snakemake.threads,
    )
