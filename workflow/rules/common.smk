# Acquisition discovery, per-acquisition settings and resource helpers shared by all rules.

from snakemake.logging import logger

from n2vpipe.discover import SAFE_NAME, config_for, discover_acquisitions

SCHEMA = workflow.source_path("../../config/schema.yaml")
RESULTS = config["results_dir"].rstrip("/")
ACQUISITIONS, DISCOVERY_PROBLEMS = discover_acquisitions(config["input_dir"], config["input_patterns"])
for problem in DISCOVERY_PROBLEMS:
    logger.warning(f"n2vpipe: {problem}")
for name in config["acquisitions"]:
    validate(config_for(config, name), SCHEMA)


wildcard_constraints:
    acq=SAFE_NAME,


def settings(section):
    """Input function: the config section as it applies to the job's acquisition."""
    return lambda wildcards: config_for(config, wildcards.acq)[section]


def raw_input(wildcards):
    """The input file (or folder) of one acquisition."""
    return str(ACQUISITIONS[wildcards.acq])


def scaled(rule_name, key):
    """Resource that grows with each retry: attempt N asks for N times the configured amount."""
    base = config["resources"][rule_name][key]
    return lambda wildcards, attempt: base * attempt


def final_outputs():
    """Everything `rule all` asks for, per acquisition."""
    targets = []
    for acq in ACQUISITIONS:
        targets.append(f"{RESULTS}/{acq}/denoised.ome.zarr")
        targets.append(f"{RESULTS}/{acq}/qc/comparison.png")
        if config_for(config, acq)["export"]["tiff"]:
            targets.append(f"{RESULTS}/{acq}/denoised.tif")
    return targets


def outputs_summary():
    """What a finished run prints: where each acquisition's results are."""
    if not ACQUISITIONS:
        return f"n2vpipe: no acquisitions matched {config['input_patterns']} in {config['input_dir']}"
    lines = [f"n2vpipe: results for {len(ACQUISITIONS)} acquisition(s) under {os.path.abspath(RESULTS)}"]
    for acq in ACQUISITIONS:
        lines.append(f"  {acq}: denoised.ome.zarr (open in napari/Fiji), model/, qc/comparison.png, logs/")
    return "\n".join(lines)
