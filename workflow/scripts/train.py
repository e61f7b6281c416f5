"""Snakemake glue for rule train: raw OME-Zarr → model/."""

from n2vpipe.discover import config_for
from n2vpipe.jobs import job_logging
from n2vpipe.train import TrainConfig, train_n2v

with job_logging(snakemake.log[0]):
    run = config_for(snakemake.config, snakemake.wildcards.acq)["train"]
    config = TrainConfig.from_mapping(
        {**snakemake.params.settings, "device": run["device"], "checkpoint_every": run["checkpoint_every"],
         "init_from": snakemake.input.get("init", "")}
    )
    train_n2v(snakemake.input.zarr, snakemake.output.model, config, threads=snakemake.threads)
