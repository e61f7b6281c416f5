"""The conda environment of the rules mirrors the package's dependencies and installs the package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base", "dask": "dask-core"}
EXTRA_PACKAGES = {"distributed": "distributed"}  # extras that conda ships as packages of their own
OUTSIDE_THE_RULES = {"snakemake", "snakemake-executor-plugin-slurm"}  # run snakemake, not inside its jobs
RULE_EXTRAS = ("workflow", "bioimageio")  # optional dependencies the rules' jobs need (export_bioimageio)


ENVIRONMENT = yaml.safe_load((ROOT / "envs" / "n2vpipe.yaml").read_text())


def conda_requirements() -> dict[str, SpecifierSet]:
    """Package name → version range of the conda packages in envs/n2vpipe.yaml (python and pip left out)."""
    found = {}
    for line in ENVIRONMENT["dependencies"]:
        if isinstance(line, str):
            name, ranges = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", line).groups()
            found[name] = SpecifierSet(ranges)
    found.pop("python")
    found.pop("pip")
    return found


def test_conda_environment_has_every_dependency_with_the_same_range() -> None:
    """The library's dependencies and those of the extras the rules use, less what runs snakemake, not its jobs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = {}
    extras = [line for extra in RULE_EXTRAS for line in project["optional-dependencies"][extra]]
    for requirement in map(Requirement, project["dependencies"] + extras):
        if requirement.name in OUTSIDE_THE_RULES:
            continue
        expected[CONDA_NAMES.get(requirement.name, requirement.name)] = requirement.specifier
        for extra in requirement.extras & EXTRA_PACKAGES.keys():
            expected[EXTRA_PACKAGES[extra]] = requirement.specifier
    assert conda_requirements() == expected


def test_conda_environment_installs_n2vpipe_from_the_workflow_folder() -> None:
    """conda runs pip in the environment file's folder, so its one pip entry must lead to this project."""
    (pip_section,) = [line["pip"] for line in ENVIRONMENT["dependencies"] if isinstance(line, dict)]
    (source,) = pip_section
    project = tomllib.loads(((ROOT / "envs" / source).resolve() / "pyproject.toml").read_text())["project"]
    assert project["name"] == "n2vpipe"
