"""Config-edited reruns on a real workflow run: exactly the jobs a change affects rerun, nothing else.

The tests share one workflow copy and run in file order; each restores the config it edits.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .conftest import (
    ALL_RULES,
    TINY_CONFIG,
    copy_workflow,
    expand_jobs,
    jobs_in,
    output_of,
    planned_jobs,
    snakemake,
    write_volume,
)

pytestmark = pytest.mark.workflow
INFERENCE = ("predict_part", "predict", "export_tiff", "qc_figure", "qc_metrics")


@dataclass
class Project:
    """A workflow copy that has run once, and the config file it runs with."""

    workdir: Path
    inputs: Path
    results: Path
    config_file: Path
    config: dict

    def write(self, config: dict) -> None:
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def plan(self, config: dict | None = None) -> set[tuple[str, str]]:
        """Jobs a dry run plans with ``config`` (default: the baseline config)."""
        self.write(self.config if config is None else config)
        return planned_jobs(self.workdir, "--configfile", str(self.config_file))

    def run(self, config: dict | None = None) -> set[tuple[str, str]]:
        """Really run with ``config``; return the jobs that ran."""
        self.write(self.config if config is None else config)
        result = snakemake(self.workdir, "--configfile", str(self.config_file), "--cores", "2")
        assert result.returncode == 0, output_of(result)
        return jobs_in(result.stdout + result.stderr)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    base = tmp_path_factory.mktemp("reruns")
    workdir = copy_workflow(base / "repo")
    for seed, name in enumerate(("a", "b")):
        write_volume(base / "in" / f"{name}.tif", seed=seed)
    config = copy.deepcopy(TINY_CONFIG)
    config.update(input_dir=str(base / "in"), results_dir=str(base / "results"),
                  acquisitions={"b": {"train": {"steps": 3}}})
    proj = Project(workdir, base / "in", base / "results", base / "tiny.yaml", config)
    assert proj.run() == expand_jobs(ALL_RULES, ["a", "b"])
    yield proj


def edited(config: dict, *path_and_value: object) -> dict:
    """A deep copy of ``config`` with the value at key path ``path_and_value[:-1]`` replaced."""
    *path, value = path_and_value
    new = copy.deepcopy(config)
    node = new
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return new


def mtimes(results: Path, acq: str) -> dict[str, float]:
    """Modification times of one acquisition's outputs (the timestamp Snakemake keeps in folders)."""
    stamps = {}
    for name in ("raw.ome.zarr", "model", "denoised.ome.zarr", "denoised.tif", "qc/comparison.png"):
        path = results / acq / name
        stamp = path / ".snakemake_timestamp" if path.is_dir() else path
        stamps[name] = (stamp if stamp.exists() else path).stat().st_mtime_ns
    return stamps


def test_unchanged_rerun_does_nothing(project: Project) -> None:
    result = snakemake(project.workdir, "-n", "--cores", "2", "--configfile", str(project.config_file))
    assert result.returncode == 0, output_of(result)
    assert "Nothing to be done" in result.stdout + result.stderr
    assert jobs_in(result.stdout + result.stderr) == set()


def test_resources_threads_and_run_only_settings_do_not_rerun(project: Project) -> None:
    config = edited(project.config, "resources", "predict", "mem_mb", 999)
    config = edited(config, "threads", "predict", 2)
    config = edited(config, "predict", "device", "cpu")
    config = edited(config, "predict", "scheduler_address", "tcp://127.0.0.1:8786")
    config = edited(config, "train", "device", "cpu")
    config = edited(config, "train", "checkpoint_every", 7)
    assert project.plan(config) == set()
    project.write(project.config)


def test_inference_value_reruns_inference_only(project: Project) -> None:
    config = edited(project.config, "predict", "pyramid_levels", 2)
    assert project.plan(config) == expand_jobs(INFERENCE, ["a", "b"])
    before = {acq: mtimes(project.results, acq) for acq in ("a", "b")}
    assert project.run(config) == expand_jobs(INFERENCE, ["a", "b"])
    for acq in ("a", "b"):
        after = mtimes(project.results, acq)
        assert after["raw.ome.zarr"] == before[acq]["raw.ome.zarr"]
        assert after["model"] == before[acq]["model"]
        assert after["denoised.ome.zarr"] > before[acq]["denoised.ome.zarr"]
        assert after["denoised.tif"] > before[acq]["denoised.tif"]
    assert project.plan(config) == set()
    project.config = config


def test_training_value_reruns_training_for_acquisitions_using_it(project: Project) -> None:
    downstream = ("train", *INFERENCE)
    # b has its own train.steps, so only a uses the global value.
    assert project.plan(edited(project.config, "train", "steps", 5)) == expand_jobs(downstream, ["a"])
    # Both use the global learning rate.
    assert project.plan(edited(project.config, "train", "learning_rate", 0.001)) == expand_jobs(downstream, ["a", "b"])
    # A per-acquisition override touches that acquisition only.
    assert project.plan(edited(project.config, "acquisitions", "b", "train", "steps", 6)) == \
        expand_jobs(downstream, ["b"])
    assert project.plan(edited(project.config, "acquisitions", "a", {"predict": {"pyramid_levels": 1}})) == \
        expand_jobs(INFERENCE, ["a"])
    # An ingest value reruns everything for everyone.
    assert project.plan(edited(project.config, "ingest", "compression_level", 3)) == \
        expand_jobs(ALL_RULES, ["a", "b"])
    assert project.plan() == set()


def test_reordered_config_does_not_rerun(project: Project) -> None:
    config = copy.deepcopy(project.config)
    config["train"] = dict(reversed(list(config["train"].items())))
    config = dict(reversed(list(config.items())))
    assert project.plan(config) == set()
    project.write(project.config)


def test_input_dir_spelling_does_not_rerun(project: Project) -> None:
    relative = os.path.relpath(project.inputs, project.workdir)
    assert planned_jobs(project.workdir, "--configfile", str(project.config_file),
                        "--config", f"input_dir={relative}") == set()


def test_new_acquisition_builds_only_it(project: Project) -> None:
    write_volume(project.inputs / "c.tif", seed=2)
    assert project.plan() == expand_jobs(ALL_RULES, ["c"])
    assert project.run() == expand_jobs(ALL_RULES, ["c"])
    assert project.plan() == set()


def test_report_after_run(project: Project) -> None:
    report = project.workdir.parent / "report.html"
    result = snakemake(project.workdir, "--configfile", str(project.config_file), "--report", str(report))
    assert result.returncode == 0, output_of(result)
    assert report.stat().st_size > 10_000
    assert "comparison.png" in report.read_text(errors="replace")
