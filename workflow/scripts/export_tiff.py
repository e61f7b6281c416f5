"""Snakemake glue for rule export_tiff: denoised.ome.zarr → denoised.tif."""

from n2vpipe.io import export_tiff, open_ome_zarr
from n2vpipe.jobs import job_logging

with job_logging(snakemake.log[0]):
    array, meta = open_ome_zarr(snakemake.input.zarr)
    export_tiff(array, meta, snakemake.output.tiff)
