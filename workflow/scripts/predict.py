"""Snakemake glue for rule predict: raw.ome.zarr + model/ → denoised.ome.zarr."""

from n2vpipe.jobs import job_logging
from n2vpipe.predict import predict_volume

with job_logging(snakemake.log[0]):
    settings = snakemake.params.settings
    predict_volume(
        snakemake.input.zarr,
        snakemake.input.model,
        snakemake.output.zarr,
        block_shape=settings["block"],
        threads=snakemake.threads,
        device=settings["device"],
        compressor=settings["compressor"],
        compression_level=settings["compression_level"],
        pyramid_levels=settings["pyramid_levels"],
        scheduler_address=settings["scheduler_address"] or None,
    )
