"""Snakemake glue for rule predict_part: raw OME-Zarr + model/ → its blocks of the partial denoised.ome.zarr."""

from pathlib import Path

from n2vpipe.discover import config_for
from n2vpipe.jobs import job_logging
from n2vpipe.predict import predict_part

with job_logging(snakemake.log[0]):
    settings = snakemake.params.settings
    run = config_for(snakemake.config, snakemake.wildcards.acq)["predict"]
    predict_part(
        snakemake.input.zarr,
        snakemake.input.model,
        snakemake.params.denoised,
        block_shape=settings["block"],
        planar_block=settings["block_2d"],
        part=int(snakemake.wildcards.part),
        parts=int(snakemake.wildcards.parts),
        threads=snakemake.threads,
        device=run["device"],
        compressor=settings["compressor"],
        compression_level=settings["compression_level"],
        output_dtype=settings["output_dtype"],
        output_range=settings["output_range"],
        precision=settings["precision"],
        scheduler_address=run["scheduler_address"] or None,
    )
    Path(snakemake.output.marker).touch()
