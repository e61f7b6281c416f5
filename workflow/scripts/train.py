"""Snakemake glue for rule train: raw.ome.zarr → model/."""

from n2vpipe.jobs import job_logging
from n2vpipe.train import TrainConfig, train_n2v

with job_logging(snakemake.log[0]):
    config = TrainConfig.from_mapping(snakemake.params.settings)
    train_n2v(snakemake.input.zarr, snakemake.output.model, config, threads=snakemake.threads)
