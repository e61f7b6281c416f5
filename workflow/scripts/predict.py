"""Snakemake glue for rule predict: all parts done → pyramid → denoised.ome.zarr."""

from n2vpipe.jobs import job_logging
from n2vpipe.predict import finalize_prediction

with job_logging(snakemake.log[0]):
    settings = snakemake.params.settings
    finalize_prediction(
        snakemake.output.zarr,
        pyramid_levels=settings["pyramid_levels"],
        compressor=settings["compressor"],
        compression_level=settings["compression_level"],
    )
