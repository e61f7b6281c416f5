"""Bad inputs and bad folders, through real snakemake runs: one bad input costs only itself, and
folder problems are refused before any work with one line naming the paths."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import ALL_RULES, copy_workflow, expand_jobs, jobs_in, output_of, snakemake, write_config, write_volume

pytestmark = pytest.mark.workflow

BAD_NAMES = {
    "sample" + "a" * 32 + ".tif": "ends in 'a' repeated 32 times",
    "bad name.tif": "contains ' '",
    "-dash.tif": "starts with '-'",
    "it's.tif": "contains \"'\"",
    "cost$5.tif": "contains '$'",
    "a;b.tif": "contains ';'",
    "café.tif": "contains 'é'",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "repo")


def skip_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ": skipped, " in line]


def test_good_acquisition_finishes_beside_bad_inputs(repo: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    write_volume(inputs / "good.tif", seed=0)
    for name in BAD_NAMES:  # valid images: only their names are wrong
        write_volume(inputs / name, seed=1)
    os.symlink(tmp_path / "moved-away.tif", inputs / "gone.tif")
    os.mkfifo(inputs / "pipe.tif")  # reading it would hang the ingest job forever
    (inputs / "notes.tif").mkdir()
    (inputs / "notes.tif" / "readme.txt").write_text("not an image")
    config = write_config(tmp_path / "config.yaml", inputs, tmp_path / "results")

    result = snakemake(repo, "--cores", "2", "--configfile", str(config))

    assert result.returncode == 0, output_of(result)
    assert jobs_in(result.stdout + result.stderr) == expand_jobs(ALL_RULES, ["good"])
    assert (tmp_path / "results" / "good" / "denoised.ome.zarr").is_dir()
    expected = {**BAD_NAMES, "gone.tif": "symbolic link", "pipe.tif": "named pipe",
                "notes.tif": "neither .tif/.tiff plane files nor OME-Zarr"}
    warnings = [line for line in skip_lines(result.stderr) if line.startswith("n2vpipe: ")]
    summary = [line for line in skip_lines(result.stdout) if line.startswith("  ")]
    for lines in (warnings, summary):  # named once at the start, once in the end-of-run summary
        assert len(lines) == len(expected), "\n".join(lines)
        for name, reason in expected.items():
            assert any(name in line and reason in line for line in lines), f"{name}: {reason}\n" + "\n".join(lines)
    dash = next(line for line in warnings if "-dash.tif" in line)
    assert "contains" not in dash
    assert "1 acquisition(s) found" in result.stderr and f"{len(expected)} input(s) skipped" in result.stderr


def test_failure_summary_names_skipped_inputs_too(repo: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.tif").write_bytes(b"this is not a TIFF file")
    write_volume(inputs / "bad name.tif")
    config = write_config(tmp_path / "config.yaml", inputs, tmp_path / "results")
    result = snakemake(repo, "--cores", "1", "--keep-going", "--configfile", str(config))
    assert result.returncode != 0, output_of(result)
    assert "1 acquisition(s) unfinished" in result.stderr, output_of(result)
    assert any(line.startswith("  ") and "bad name.tif: skipped, " in line
               for line in result.stderr.splitlines()), output_of(result)


SNAKEMAKE_CHATTER = ("Using workflow specific profile", "Config file config/config.yaml is extended")


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a run refused at parse time prints (asserting it failed and printed nothing else)."""
    assert result.returncode == 1, output_of(result)
    lines = [line for line in result.stderr.splitlines() if not line.startswith(SNAKEMAKE_CHATTER)]
    assert len(lines) == 1 and lines[0].startswith("n2vpipe: "), output_of(result)
    return lines[0]


@pytest.mark.parametrize(("results", "expected"), [
    ("in", "is the same folder as input_dir"),
    ("in/results", "lies inside input_dir"),
    ("in-link/results", "lies inside input_dir"),
    (".", "contains input_dir"),
])
def test_results_overlapping_inputs_is_refused_before_any_work(repo: Path, tmp_path: Path, results: str,
                                                               expected: str) -> None:
    inputs = tmp_path / "in"
    write_volume(inputs / "a.tif")
    os.symlink(inputs, tmp_path / "in-link")
    config = write_config(tmp_path / "config.yaml", inputs, tmp_path / results)
    line = refusal(snakemake(repo, "--cores", "1", "--configfile", str(config)))
    assert expected in line and str(tmp_path / results) in line and str(inputs) in line, line
    assert not (inputs / "results").exists() and not (inputs / ".snakemake").exists()


@pytest.mark.parametrize(("results", "expected"), [
    ("blocker", "exists and is not a folder"),
    ("blocker/sub/results", "blocker is a file"),
])
def test_results_that_cannot_be_created_are_refused(repo: Path, tmp_path: Path, results: str,
                                                    expected: str) -> None:
    write_volume(tmp_path / "in" / "a.tif")
    (tmp_path / "blocker").write_text("a file where the results should go")
    config = write_config(tmp_path / "config.yaml", tmp_path / "in", tmp_path / results)
    line = refusal(snakemake(repo, "--cores", "1", "--configfile", str(config)))
    assert expected in line and str(tmp_path / results) in line, line


def test_results_on_a_read_only_mount_are_refused(repo: Path, tmp_path: Path, read_only_mount: Path) -> None:
    write_volume(tmp_path / "in" / "a.tif")
    config = write_config(tmp_path / "config.yaml", tmp_path / "in", read_only_mount / "results")
    line = refusal(snakemake(repo, "--cores", "1", "--configfile", str(config)))
    assert f"{read_only_mount} is not writable" in line and str(read_only_mount / "results") in line, line


def test_missing_input_dir_is_refused(repo: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", tmp_path / "unmounted", tmp_path / "results")
    line = refusal(snakemake(repo, "--cores", "1", "--configfile", str(config)))
    assert f"input_dir {tmp_path / 'unmounted'} does not exist" in line, line


def test_override_for_no_input_warns_with_the_closest_name(repo: Path, tmp_path: Path) -> None:
    write_volume(tmp_path / "in" / "sample_07.tif")
    config = write_config(tmp_path / "config.yaml", tmp_path / "in", tmp_path / "results",
                          acquisitions={"sample_7": {"train": {"steps": 8}}})
    result = snakemake(repo, "-n", "--cores", "1", "--configfile", str(config))
    assert result.returncode == 0, output_of(result)  # a dry run logs to stdout
    assert ("n2vpipe: acquisitions: 'sample_7' matches no input, so its settings are used by nothing; "
            "did you mean 'sample_07'?") in result.stdout + result.stderr, output_of(result)
