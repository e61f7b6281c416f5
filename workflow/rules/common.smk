# Acquisition discovery, per-acquisition settings and resource helpers shared by all rules.

import math
import sys
from types import SimpleNamespace

import yaml

from snakemake.logging import logger

from n2vpipe.layout import is_ome_zarr
from n2vpipe.discover import (
    RUN_ONLY,
    SAFE_NAME,
    ArrivalRule,
    canonical,
    config_for,
    discover_acquisitions,
    folder_problems,
    model_from_problems,
    model_from_source,
    split_arrived,
    unmatched_overrides,
)

SCHEMA = workflow.source_path("../../config/schema.yaml")
RESULTS = config["results_dir"].rstrip("/")
if not workflow.remote_exec:
    # Before any work: results kept apart from the inputs, and writable. (Cluster jobs skip
    # this: the submitting run checked it.) sys.exit prints one line per problem, where an
    # exception would add snakemake's file/line header and stack.
    FOLDER_PROBLEMS = folder_problems(config["input_dir"], RESULTS)
    if FOLDER_PROBLEMS:
        sys.exit("\n".join(f"n2vpipe: {problem}" for problem in FOLDER_PROBLEMS))
DISCOVERED, SKIPPED = discover_acquisitions(config["input_dir"], config["input_patterns"])
# Absolute input paths: Snakemake records them, so `input_dir: data/in` and `/abs/data/in`
# (as cron passes it) must not look like a changed input.
DISCOVERED = {name: Path(os.path.abspath(path)) for name, path in DISCOVERED.items()}
if workflow.remote_exec:
    # A job on a cluster node: the submitting run already decided which acquisitions
    # are complete, so a later touch of an input cannot make a running job lose its input.
    ACQUISITIONS, PENDING = DISCOVERED, {}
else:
    ACQUISITIONS, PENDING = split_arrived(DISCOVERED, ArrivalRule.from_mapping(config["arrival"]))
    # Before any work: every model_from names an acquisition that trains its own model.
    MODEL_FROM_PROBLEMS = model_from_problems(config, DISCOVERED)
    if MODEL_FROM_PROBLEMS:
        sys.exit("\n".join(f"n2vpipe: {problem}" for problem in MODEL_FROM_PROBLEMS))
    for name in list(ACQUISITIONS):
        if model_from_source(config, name) in PENDING:
            PENDING[name] = f"the acquisition its model comes from, {model_from_source(config, name)}, is not complete"
            del ACQUISITIONS[name]
    # workflow/cron/n2vpipe-cron.sh reads these lines: the "discovery" line says the
    # "PATH: skipped, REASON" lines below it are the complete list of this run.
    logger.info(
        f"n2vpipe: discovery: {len(DISCOVERED)} acquisition(s) found in {config['input_dir']}, "
        f"{len(SKIPPED)} input(s) skipped"
    )
    for skip in SKIPPED:
        logger.warning(f"n2vpipe: {skip.message()}")
    for name, reason in PENDING.items():
        logger.warning(f"n2vpipe: {name}: not complete yet ({reason}); left for a later run")
    for warning in unmatched_overrides(config["acquisitions"], DISCOVERED):
        logger.warning(f"n2vpipe: {warning}")
for name in config["acquisitions"]:
    validate(config_for(config, name), SCHEMA)


wildcard_constraints:
    acq=SAFE_NAME,




def settings(section):
    """Input function: the config section as it applies to the job's acquisition, without RUN_ONLY keys.

    Keys are sorted so that Snakemake's params check (which compares repr) only
    sees real value changes, not a reordered config file.
    """

    def section_settings(wildcards):
        values = config_for(config, wildcards.acq)[section]
        return canonical({k: v for k, v in values.items() if k not in RUN_ONLY.get(section, ())})

    return section_settings


def raw_input(wildcards):
    """The input file (or folder) of one acquisition."""
    if wildcards.acq not in ACQUISITIONS:
        raise ValueError(
            f"n2vpipe: no complete input for acquisition {wildcards.acq!r} in {config['input_dir']} "
            f"(patterns {config['input_patterns']})"
        )
    return str(ACQUISITIONS[wildcards.acq])


def raw_zarr(wildcards):
    """The acquisition's raw OME-Zarr: an OME-Zarr input is read where it is, a TIFF is ingested first."""
    path = ACQUISITIONS.get(wildcards.acq)
    if path is not None and is_ome_zarr(path):
        return str(path)
    return f"{RESULTS}/{wildcards.acq}/raw.ome.zarr"


def model_source(wildcards):
    """The model an acquisition uses instead of training (config model:, or model_from: another acquisition's
    model/, trained first); empty when none. Inside the results folder it is spelled as rule train's output
    (so another acquisition's model/ is trained first), elsewhere as an absolute path."""
    source = config_for(config, wildcards.acq)["model"]
    if source:
        return model_input_path(source)
    origin = model_from_source(config, wildcards.acq)
    return f"{RESULTS}/{origin}/model" if origin else ""


def model_input_path(source):
    """A model path as rules name it: inside the results folder spelled as rule train's output (so that the
    model is made first), elsewhere absolute."""
    inside = os.path.relpath(os.path.abspath(source), os.path.abspath(RESULTS))
    return f"{RESULTS}/{inside}" if not inside.startswith(os.pardir) else os.path.abspath(source)


def init_input(wildcards):
    """The unpack() input of the train rule, {"init": the model config train.init_from names} (another acquisition's
    model/, which is then trained first, when it names an acquisition), or {} for a start from scratch."""
    source = config_for(config, wildcards.acq)["train"]["init_from"]
    if not source:
        return {}
    if source == wildcards.acq:
        raise ValueError(f"n2vpipe: acquisition {source!r} sets train.init_from to itself; name another "
                         "acquisition, a model/ folder or a package, or remove it")
    if source in DISCOVERED or source in config["acquisitions"]:
        return {"init": f"{RESULTS}/{source}/model"}
    return {"init": model_input_path(source)}


def model_dir(wildcards):
    """The acquisition's model folder: trained on it (model/), or a checked copy of config model: (imported_model/)."""
    if model_source(wildcards):
        return f"{RESULTS}/{wildcards.acq}/imported_model"
    return f"{RESULTS}/{wildcards.acq}/model"


def prediction_parts(wildcards):
    """Markers of the inference jobs one acquisition is split into (config predict.jobs)."""
    parts = config_for(config, wildcards.acq)["predict"]["jobs"]
    return [f"{RESULTS}/{wildcards.acq}/.predict_parts/part{i}-of-{parts}.done" for i in range(parts)]


# ---------------------------------------------------------------- resources
# Every rule's resources come from config `resources:` (and `threads:`); each can
# also be replaced without editing rules: `--set-resources predict:mem_mb=64000`.

MIB = 2**20
with open(SCHEMA) as _schema:
    RESOURCE_DEFAULTS = {
        rule_name: spec.get("default", {})
        for rule_name, spec in yaml.safe_load(_schema)["properties"]["resources"]["properties"].items()
    }


def rule_resources(rule_name):
    """config `resources: {rule_name: ...}` over the schema's defaults for that rule."""
    return {**RESOURCE_DEFAULTS[rule_name], **config["resources"].get(rule_name, {})}


# n2vpipe.unet.SLAB_VOXELS, not imported here: that would load torch on every parse of the workflow.
INFERENCE_SLAB_VOXELS = 2**20


def _voxels(size):
    return size["z"] * size["y"] * size["x"]


def estimated_mem_mb(rule_name, acq, threads):
    """Rough peak memory (MB) of one job, from its block/chunk/patch sizes and threads."""
    cfg = config_for(config, acq)
    filters = cfg["train"]["base_filters"]
    if rule_name == "ingest":
        # each worker thread holds a few copies of one chunk (read, cast, compress)
        return 500 + math.ceil(threads * _voxels(cfg["ingest"]["chunks"]) * 4 * 4 / MIB)
    if rule_name == "train":
        patch = cfg["train"]["batch_size"] * _voxels(cfg["train"]["patch"])
        pool = cfg["train"]["pool_tiles"] * 8 * _voxels(cfg["train"]["patch"])
        return 2000 + math.ceil((patch * filters * 4 * 24 + pool * 4) / MIB)
    if rule_name == "predict":
        # one forward pass at a time (one network thread), in slabs of INFERENCE_SLAB_VOXELS (a few
        # alive), keeping the skip windows the decoder reads (~2x the block); float32 at the network's
        # width; I/O buffers per thread
        block = _voxels(cfg["predict"]["block"])
        features = (2 * block + 4 * INFERENCE_SLAB_VOXELS) * filters * 4
        return 900 + math.ceil((features + threads * block * 4 * 4) / MIB)
    return 0


def mem_mb_for(rule_name):
    """Resource function: configured memory, raised to the estimate, times the attempt."""
    base = rule_resources(rule_name)["mem_mb"]

    def mem(wildcards, threads, attempt):
        return max(base, estimated_mem_mb(rule_name, wildcards.acq, threads)) * attempt

    return mem


def runtime_for(rule_name):
    """Resource function: configured minutes times the attempt (training: at least its time budget)."""
    base = rule_resources(rule_name)["runtime"]

    def minutes(wildcards, attempt):
        floor = base
        if rule_name == "train":
            budget = config_for(config, wildcards.acq)["train"]["max_minutes"]
            floor = max(base, math.ceil(budget * 1.2) + 10) if budget else base
        return floor * attempt

    return minutes


def gpu_resources(rule_name):
    """GPU resources of a rule, for the SLURM plugin (`--gpus[=model:]N`, `--cpus-per-gpu`).

    Only set keys are returned (gpu_model and cpus_per_gpu are optional); local runs ignore them.
    """
    res = rule_resources(rule_name)
    gpus = res.get("gpu", 0)
    if not gpus:
        return {"gpu": 0}
    out = {"gpu": gpus}
    if res.get("gpu_model"):
        out["gpu_model"] = res["gpu_model"]
    if res.get("cpus_per_gpu"):
        out["cpus_per_gpu"] = res["cpus_per_gpu"]
    return out


# ---------------------------------------------------------------- targets, summaries


def final_outputs():
    """Everything `rule all` asks for, per acquisition."""
    targets = []
    for acq in ACQUISITIONS:
        targets.extend(outputs_of(acq))
    if ACQUISITIONS:
        targets.append(f"{RESULTS}/summary.html")  # the report's summary table (qc.smk)
    return targets


def outputs_of(acq):
    """The final files of one acquisition."""
    targets = [f"{RESULTS}/{acq}/denoised.ome.zarr", f"{RESULTS}/{acq}/qc/comparison.png"]
    targets += [f"{RESULTS}/{acq}/qc/{name}" for name in ("noise.json", "noise.png", "metrics.json")]
    if config_for(config, acq)["export"]["tiff"]:
        targets.append(f"{RESULTS}/{acq}/denoised.tif")
    if config_for(config, acq)["export"]["bioimageio"]:
        targets.append(f"{RESULTS}/{acq}/model.bioimageio.zip")
    return targets


def left_out_summary():
    """Lines naming acquisitions left for a later run, and inputs skipped (with the reason)."""
    lines = [f"  {acq}: not complete yet ({reason}); left for a later run" for acq, reason in PENDING.items()]
    return lines + [f"  {skip.message()}" for skip in SKIPPED]


def outputs_summary():
    """What a finished run prints: where each acquisition's results are."""
    if not ACQUISITIONS:
        lines = [f"n2vpipe: no complete acquisitions matched {config['input_patterns']} in {config['input_dir']}"]
        return "\n".join(lines + left_out_summary())
    lines = [f"n2vpipe: results for {len(ACQUISITIONS)} acquisition(s) under {os.path.abspath(RESULTS)}"]
    for acq in ACQUISITIONS:
        lines.append(f"  {acq}: denoised.ome.zarr (open in napari/Fiji), model/, qc/comparison.png, logs/")
    return "\n".join(lines + noise_warnings() + left_out_summary())


def noise_warnings():
    """Lines naming acquisitions whose noise check (qc/noise.json) found correlated noise left unhidden,
    or whose residual diagnostics (qc/metrics.json) raise flags. (Imported here, at the end of a run:
    these modules load numpy, which parsing the workflow should not.)"""
    from n2vpipe.metrics import metrics_flags
    from n2vpipe.noise import noise_warning

    lines = []
    for acq in ACQUISITIONS:
        warning = noise_warning(f"{RESULTS}/{acq}/qc/noise.json")
        if warning:
            lines.append(f"  {acq}: WARNING (qc/noise.json): {warning}")
        flags = metrics_flags(f"{RESULTS}/{acq}/qc/metrics.json")
        if flags:
            lines.append(f"  {acq}: WARNING (qc/metrics.json): residual diagnostics flag {', '.join(flags)}")
    return lines


def write_batch_summary():
    """results/summary.csv: one row per acquisition of this run (n2vpipe.summary), finished or not."""
    from n2vpipe.summary import acquisition_row, write_summary

    if ACQUISITIONS:
        rows = [acquisition_row(acq, Path(RESULTS) / acq, Path(raw_zarr(SimpleNamespace(acq=acq))))
                for acq in ACQUISITIONS]
        write_summary(Path(RESULTS) / "summary.csv", rows)


def failure_summary():
    """What a failed run prints: the acquisitions left unfinished and where their logs are."""
    unfinished = [acq for acq in ACQUISITIONS if not all(os.path.exists(t) for t in outputs_of(acq))]
    lines = [
        f"n2vpipe: {len(unfinished)} acquisition(s) unfinished; the failed jobs and their logs are listed above "
        "(look for 'Error in rule' and its 'log' line). Rerun the same command to retry them."
    ]
    for acq in unfinished:
        lines.append(f"  {acq}: logs in {os.path.abspath(os.path.join(RESULTS, acq, 'logs'))}")
    return "\n".join(lines + noise_warnings() + left_out_summary())
