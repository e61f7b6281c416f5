"""The whole workflow through snakemake-executor-plugin-slurm on a real one-node SLURM cluster.

Runs `snakemake --profile slurm` as the README documents, with the CI overrides only:
`--set-resources train:gpu=0` (the test node has no GPUs) and a short first status check.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ALL_RULES, copy_workflow, output_of, snakemake, write_config, write_volume

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
SAMPLES = ("sample_a",)
CI_ARGS = ("--profile", "slurm", "--slurm-init-seconds-before-status-checks", "1",
           "--seconds-between-status-checks", "2", "--jobs", "4")


def submitted(text: str) -> dict[str, str]:
    """SLURM job id -> the snakemake job's rule and acquisition, from the plugin's messages."""
    jobs: dict[str, str] = {}
    for jobid, slurm_id in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", text):
        jobs[slurm_id] = jobid
    return jobs


def sacct(env: dict[str, str], ids: list[str]) -> dict[str, tuple[str, str, int]]:
    """SLURM job id -> (job name, state, requested memory in MB) as accounting recorded it."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "JobID,JobName,State,ReqMem"],
                         env=env, capture_output=True, text=True, timeout=30, check=True).stdout
    rows = {}
    for line in out.splitlines():
        jobid, name, state, reqmem = line.split("|")
        number = float(re.match(r"[\d.]+", reqmem).group())
        unit = re.search(r"[KMGT]", reqmem)
        factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[unit.group() if unit else "M"]
        rows[jobid] = (name, state.split()[0], round(number * factor))
    return rows


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("slurm")
    repo = copy_workflow(base / "repo")
    inputs = base / "in"
    for seed, name in enumerate(SAMPLES):
        write_volume(inputs / f"{name}.tif", seed=seed)
    (inputs / "broken.tif").write_bytes(b"not a TIFF at all")
    config = write_config(base / "ci.yaml", inputs, base / "results")
    return repo, config, base / "results"


def test_demo_runs_through_sbatch_and_failures_name_their_logs(slurm_cluster: dict[str, str],
                                                                  project: tuple[Path, Path, Path]) -> None:
    repo, config, results = project
    result = snakemake(repo, *CI_ARGS, "--set-resources", "train:gpu=0", "--retries", "1",
                       "--configfile", str(config), env=slurm_cluster, timeout=420)
    text = result.stdout + result.stderr
    # broken.tif fails (twice: one retry); --keep-going finishes the others.
    assert result.returncode != 0, output_of(result)
    for acq in SAMPLES:
        for name in ("denoised.ome.zarr", "denoised.tif", "qc/comparison.png"):
            assert (results / acq / name).exists(), f"{acq}/{name} missing\n{output_of(result)}"
    broken_log = results / "broken" / "logs" / "ingest.log"
    assert str(broken_log) in text and "not a readable TIFF" in broken_log.read_text()
    assert re.search(r"\.snakemake/slurm_logs/rule_ingest/broken/\d+\.log", text), "SLURM log path not reported"

    jobs = submitted(text)
    rows = sacct(slurm_cluster, list(jobs))
    assert set(rows) == set(jobs), "sacct does not list every submitted job"
    states = sorted(state for _, state, _ in rows.values())
    assert states.count("COMPLETED") == len(SAMPLES) * len(ALL_RULES), rows
    assert states.count("FAILED") == 2, rows
    failed_mem = sorted(mem for _, state, mem in rows.values() if state == "FAILED")
    assert failed_mem[1] == 2 * failed_mem[0], f"the retry should ask for twice the memory: {rows}"


@pytest.mark.parametrize(("gpu_model", "expected"), [("", "--gpus=1"), ("tesla", "--gpus=tesla:1")])
def test_profile_asks_for_a_gpu_for_training(slurm_cluster: dict[str, str], project: tuple[Path, Path, Path],
                                             gpu_model: str, expected: str) -> None:
    """Without the CI override, training asks SLURM for a GPU, which this node rejects at submission."""
    repo, config, results = project
    extra = config.with_name(f"gpu-{gpu_model or 'any'}.yaml")
    extra.write_text(yaml.safe_dump({"resources": {"train": {"gpu": 1, "gpu_model": gpu_model}}}))
    target = str(results / SAMPLES[0] / "model")
    result = snakemake(repo, *CI_ARGS, "--retries", "0", "--configfile", str(config), str(extra),
                       "--forcerun", target, "--", target, env=slurm_cluster, timeout=120)
    text = result.stdout + result.stderr
    assert result.returncode != 0, output_of(result)
    assert "sbatch failed" in text and expected in text, output_of(result)
    assert "Invalid generic resource" in text or "gres" in text.lower(), output_of(result)
