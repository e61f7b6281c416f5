"""The conda environment of the rules mirrors the package's dependencies."""

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
RULE_EXTRAS = ("bioimageio",)  # optional dependencies that rules import (export_bioimageio)


def conda_requirements() -> dict[str, SpecifierSet]:
    """Package name → version range in envs/n2vpipe.yaml (python left out)."""
    spec = yaml.safe_load((ROOT / "envs" / "n2vpipe.yaml").read_text())
    found = {}
    for line in spec["dependencies"]:
        name, ranges = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", line).groups()
        found[name] = SpecifierSet(ranges)
    found.pop("python")
    return found


def test_conda_environment_has_every_dependency_with_the_same_range() -> None:
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
