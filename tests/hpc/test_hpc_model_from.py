"""model_from: an acquisition uses another's model through a Snakemake edge. On a real workflow run: editing the
source's training settings reruns the source's training and the inference of every acquisition using its model,
nothing else of theirs and nothing of the others; a name no input has fails before any work."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from .conftest import TINY_CONFIG, copy_workflow, jobs_in, output_of, planned_jobs, snakemake, write_volume

pytestmark = pytest.mark.workflow


def rules_of(jobs: set[tuple[str, str]], acq: str) -> set[str]:
    return {rule for rule, name in jobs if name == acq}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("model_from")
    for seed, name in enumerate(("day1", "day2", "other")):
        write_volume(base / "in" / f"{name}.tif", seed=seed)
    return copy_workflow(base / "repo")


def write(workdir: Path, results: str, acquisitions: dict) -> Path:
    config = {**copy.deepcopy(TINY_CONFIG), "input_dir": str(workdir.parent / "in"),
              "results_dir": str(workdir.parent / results), "acquisitions": acquisitions}
    path = workdir.parent / f"{results}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_editing_the_source_training_reruns_inference_of_its_users_only(workdir: Path) -> None:
    config = write(workdir, "results", {"day2": {"model_from": "day1"}})
    result = snakemake(workdir, "--configfile", str(config), "--cores", "2")
    assert result.returncode == 0, output_of(result)
    ran = jobs_in(result.stdout + result.stderr)
    assert "train" not in rules_of(ran, "day2") and "import_model" in rules_of(ran, "day2")
    results = workdir.parent / "results"
    assert (results / "day2" / "imported_model" / "weights.pt").read_bytes() == \
        (results / "day1" / "model" / "weights.pt").read_bytes()

    edited = write(workdir, "results", {"day2": {"model_from": "day1"}, "day1": {"train": {"steps": 5}}})
    plan = planned_jobs(workdir, "--configfile", str(edited))
    day1, day2 = rules_of(plan, "day1"), rules_of(plan, "day2")
    assert "train" in day1 and "ingest" not in day1, plan
    assert day2 == (day1 - {"train"}) | {"import_model"}, plan
    assert "predict" in day2 and not rules_of(plan, "other"), plan
    # without that edit, an inference setting of day2 reruns day2's inference only
    plan = planned_jobs(workdir, "--configfile", str(write(workdir, "results", {
        "day2": {"model_from": "day1", "predict": {"pyramid_levels": 2}}})))
    assert {name for _, name in plan} == {"day2"} and "import_model" not in rules_of(plan, "day2"), plan


@pytest.mark.parametrize(("acquisitions", "message"), [
    ({"day2": {"model_from": "day_1"}},
     "n2vpipe: acquisition 'day2': model_from: 'day_1' names no acquisition found in {inputs} (did you mean "
     "'day1'?); give the name of an acquisition trained in this run"),
    ({"day2": {"model_from": "day1", "model": "/x/model"}},
     "n2vpipe: acquisition 'day2' sets both model: and model_from: 'day1'; keep one of them"),
    ({"day2": {"model_from": "day1"}, "other": {"model_from": "day2"}},
     "n2vpipe: acquisition 'other': model_from: 'day2' names an acquisition that trains no model of its own"),
], ids=["unknown", "beside-model", "chained"])
def test_a_model_from_that_cannot_be_followed_fails_before_any_work(workdir: Path, acquisitions: dict,
                                                                    message: str) -> None:
    config = write(workdir, "results_refused", acquisitions)
    result = snakemake(workdir, "--configfile", str(config), "--cores", "2")
    assert result.returncode != 0
    assert message.format(inputs=workdir.parent / "in") in result.stderr, output_of(result)
    assert not (workdir.parent / "results_refused").exists() or \
        not any(p.name in ("day1", "day2", "other") for p in (workdir.parent / "results_refused").iterdir())


def test_users_of_a_model_from_an_acquisition_still_arriving_wait_for_it(workdir: Path) -> None:
    """day1 has not arrived (no marker): day2, which uses its model, is left for a later run, and other goes on."""
    marker = workdir.parent / "in" / "day2.done"
    config = write(workdir, "results_waiting", {"day2": {"model_from": "day1"}})
    settings = yaml.safe_load(config.read_text())
    settings["arrival"] = {"marker_suffix": ".done"}
    config.write_text(yaml.safe_dump(settings))
    for name in ("day2", "other"):
        (workdir.parent / "in" / f"{name}.done").touch()
    try:
        result = snakemake(workdir, "-n", "--cores", "2", "--configfile", str(config))
    finally:
        for name in ("day2", "other"):
            (workdir.parent / "in" / f"{name}.done").unlink()
    assert result.returncode == 0, output_of(result)
    assert {name for _, name in jobs_in(result.stdout + result.stderr)} == {"other"}
    assert "day2: not complete yet (the acquisition its model comes from, day1, is not complete)" in output_of(result)
    assert not marker.exists()
