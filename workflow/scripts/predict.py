"""Snakemake glue for rule predict: all parts done → pyramid → denoised.ome.zarr."""

from n2vpipe.discover import RUN_ONLY, config_for
from n2vpipe.jobs import job_logging
from n2vpipe.predict import PredictConfig, finalize_prediction

with job_logging(snakemake.log[0]):
    run = config_for(snakemake.config, snakemake.wildcards.acq)["predict"]
    config = PredictConfig.from_mapping({**snakemake.params.settings, **{k: run[k] for k in RUN_ONLY["predict"]}})
    finalize_prediction(snakemake.output.zarr, config)
