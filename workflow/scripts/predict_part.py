"""Snakemake glue for rule predict_part: raw OME-Zarr + model/ → its blocks of the partial denoised.ome.zarr."""

from pathlib import Path

from n2vpipe.discover import RUN_ONLY, config_for
from n2vpipe.jobs import job_logging
from n2vpipe.predict import PredictConfig, predict_part

with job_logging(snakemake.log[0]):
    run = config_for(snakemake.config, snakemake.wildcards.acq)["predict"]
    config = PredictConfig.from_mapping({**snakemake.params.settings, **{k: run[k] for k in RUN_ONLY["predict"]}})
    predict_part(snakemake.input.zarr, snakemake.input.model, snakemake.params.denoised, config,
                 part=int(snakemake.wildcards.part), parts=int(snakemake.wildcards.parts), threads=snakemake.threads)
    Path(snakemake.output.marker).touch()
