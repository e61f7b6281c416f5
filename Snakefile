# n2vpipe: Noise2Void denoising of large microscopy volumes.
#   local:  snakemake --cores all
#   HPC:    snakemake --profile slurm          (site settings: slurm/config.v8+.yaml)
#   cron:   workflow/cron/n2vpipe-cron.sh IN OUT (one run at a time, log per run)
# Settings: config/config.yaml (documented in config/schema.yaml).

import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# The library lives in src/ beside this file, also when this file is a module of a lab's own
# workflow (workflow.basedir is then the lab's folder, current_basedir this one). Where that
# folder is local (a clone, or a module deployed from a local path) this run and its jobs import
# the library from it; otherwise it is the installed n2vpipe (envs/n2vpipe.yaml installs it).
N2VPIPE_SRC = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)) / "src"
if (N2VPIPE_SRC / "n2vpipe").is_dir():
    sys.path.insert(0, str(N2VPIPE_SRC))
    os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (str(N2VPIPE_SRC), os.environ.get("PYTHONPATH")) if p))


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/guard.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/qc.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
    localrule: True


onsuccess:
    write_batch_summary()
    print(outputs_summary())


onerror:
    write_batch_summary()
    print(failure_summary(), file=sys.stderr)
