"""Cron-triggered ingestion through workflow/cron/n2vpipe-cron.sh, run for real (locally, no profile)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from .conftest import (
    ALL_RULES,
    BIN,
    copy_workflow,
    expand_jobs,
    jobs_in,
    subprocess_env,
    write_config,
    write_volume,
)

pytestmark = pytest.mark.workflow
MIN_AGE = 3  # seconds an input must be unchanged before a cron run takes it


@dataclass
class Cron:
    """A workflow copy, its input/results folders and the environment a crontab line would set."""

    repo: Path
    inputs: Path
    results: Path
    env: dict[str, str]

    @property
    def script(self) -> Path:
        return self.repo / "workflow" / "cron" / "n2vpipe-cron.sh"

    def command(self) -> list[str]:
        return ["timeout", "-k", "10", "240", str(self.script), str(self.inputs), str(self.results)]

    def run(self) -> subprocess.CompletedProcess[str]:
        # cron starts jobs in $HOME, not in the repository
        return subprocess.run(self.command(), env=self.env, cwd=Path.home(), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)

    def logs(self) -> list[Path]:
        return sorted((self.results / "logs" / "cron").glob("*-*.log"))

    def last_log(self) -> str:
        return (self.results / "logs" / "cron" / "latest.log").read_text()

    def complete(self, acq: str) -> bool:
        return all((self.results / acq / name).exists()
                   for name in ("denoised.ome.zarr", "denoised.tif", "qc/comparison.png"))


@pytest.fixture
def cron(tmp_path: Path) -> Iterator[Cron]:
    repo = copy_workflow(tmp_path / "repo")
    inputs, results = tmp_path / "incoming", tmp_path / "results"
    inputs.mkdir()
    config = write_config(tmp_path / "site.yaml", inputs, results)
    env = subprocess_env()
    env.update(N2VPIPE_PROFILE="", N2VPIPE_CORES="2", N2VPIPE_MIN_AGE=str(MIN_AGE),
               N2VPIPE_CONFIGFILE=str(config), N2VPIPE_SNAKEMAKE=str(BIN / "snakemake"))
    yield Cron(repo, inputs, results, env)


def settle() -> None:
    """Wait until files written so far count as completely arrived."""
    time.sleep(MIN_AGE + 0.5)


def describe(result: subprocess.CompletedProcess[str], cron: Cron) -> str:
    log = cron.last_log() if (cron.results / "logs" / "cron" / "latest.log").exists() else ""
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\nlog:\n{log[-6000:]}"


class Copier(threading.Thread):
    """Copies a TIFF into place slowly, the way a big transfer grows a file."""

    def __init__(self, data: bytes, dest: Path) -> None:
        super().__init__(daemon=True)
        self.data, self.dest, self.stop = data, dest, threading.Event()

    def run(self) -> None:
        with open(self.dest, "wb") as out:
            for start in range(0, len(self.data), 256):
                out.write(self.data[start:start + 256])
                out.flush()
                if self.stop.wait(0.1):
                    break

    def finish(self) -> None:
        """Stop dripping and write the rest at once."""
        self.stop.set()
        self.join()
        self.dest.write_bytes(self.data)


def test_growing_file_waits_and_new_file_is_processed_by_next_run_alone(cron: Cron, tmp_path: Path) -> None:
    write_volume(cron.inputs / "a.tif", seed=0)
    settle()
    full = write_volume(tmp_path / "staging" / "grow.tif", seed=1).read_bytes()
    copier = Copier(full, cron.inputs / "grow.tif")
    copier.start()
    try:
        first = cron.run()
    finally:
        copier.finish()
    assert first.returncode == 0, describe(first, cron)
    assert first.stdout == "", "a good run is silent (cron mails output)"
    assert cron.complete("a")
    assert not (cron.results / "grow").exists(), "a file still being copied was ingested"
    assert "grow: not complete yet" in cron.last_log()
    assert jobs_in(cron.last_log()) == expand_jobs(ALL_RULES, ["a"])

    write_volume(cron.inputs / "c.tif", seed=2)  # arrives between runs
    settle()
    second = cron.run()
    assert second.returncode == 0, describe(second, cron)
    assert jobs_in(cron.last_log()) == expand_jobs(ALL_RULES, ["grow", "c"])
    assert cron.complete("grow") and cron.complete("c")
    raw = tifffile.imread(cron.inputs / "grow.tif")
    assert tifffile.imread(cron.results / "grow" / "denoised.tif").squeeze().shape == raw.shape

    third = cron.run()
    assert third.returncode == 0, describe(third, cron)
    assert jobs_in(cron.last_log()) == set()
    assert len(cron.logs()) == 3, "one log per run"


def test_overlapping_runs_do_not_interfere(cron: Cron) -> None:
    write_volume(cron.inputs / "d.tif", seed=3)
    settle()
    first = subprocess.Popen(cron.command(), env=cron.env, cwd=Path.home(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    lock = cron.results / ".n2vpipe-cron.lock"
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until the first run holds the lock
        if lock.exists() and subprocess.run(["flock", "-n", str(lock), "true"]).returncode != 0:
            break
        time.sleep(0.1)
    else:
        first.kill()
        pytest.fail("the first run never took the lock")
    second = cron.run()
    out, err = first.communicate(timeout=240)
    assert second.returncode == 0, describe(second, cron)
    assert "another run is still active" in second.stdout
    assert first.returncode == 0, f"{out}\n{err}\n{cron.last_log()}"
    assert len(cron.logs()) == 1, "the overlapping run must not start snakemake"
    assert cron.complete("d")
    denoised = tifffile.imread(cron.results / "d" / "denoised.tif")
    assert np.isfinite(denoised).all()
    again = cron.run()
    assert again.returncode == 0, describe(again, cron)
    assert jobs_in(cron.last_log()) == set()


def test_a_run_started_by_hand_keeps_cron_out_of_its_results(cron: Cron, results_lock_holder) -> None:
    write_volume(cron.inputs / "e.tif", seed=4)
    settle()
    holder = results_lock_holder(cron.results)
    result = cron.run()
    holder.kill()
    holder.wait()
    assert result.returncode == 0, describe(result, cron)
    assert f"another n2vpipe run holds {cron.results} (" in result.stdout, describe(result, cron)
    assert f'"pid": {holder.pid}' in result.stdout
    assert cron.logs() == [], "cron must not start snakemake beside the other run"
    after = cron.run()
    assert after.returncode == 0, describe(after, cron)
    assert cron.complete("e")


def test_failed_acquisition_is_reported_and_retried_without_blocking_new_ones(cron: Cron) -> None:
    (cron.inputs / "broken.tif").write_bytes(b"this is not a TIFF file")
    write_volume(cron.inputs / "e.tif", seed=4)
    settle()
    first = cron.run()
    assert first.returncode != 0, describe(first, cron)
    broken_log = cron.results / "broken" / "logs" / "ingest.log"
    assert "run FAILED" in first.stdout and str(cron.logs()[-1]) in first.stdout
    assert str(broken_log) in first.stdout, first.stdout
    assert broken_log.exists()
    assert cron.complete("e")

    write_volume(cron.inputs / "f.tif", seed=5)
    settle()
    second = cron.run()
    assert second.returncode != 0, describe(second, cron)
    assert jobs_in(cron.last_log()) == expand_jobs(ALL_RULES, ["f"]) | {("ingest", "broken")}
    assert cron.complete("f")


def write_striped_volume(path: Path, seed: int = 7, shape: tuple[int, int, int] = (16, 64, 64)) -> Path:
    """A small uint16 ZYX TIFF whose read noise is averaged over 3 voxels along X (camera stripes)."""
    rng = np.random.default_rng(seed)
    read = ndimage.uniform_filter1d(rng.normal(0.0, 20.0, shape), 3, axis=2, mode="wrap") * np.sqrt(3)
    noisy = rng.poisson(200, shape) + read + 100
    tifffile.imwrite(path, np.clip(noisy, 0, 65535).astype(np.uint16), imagej=True, metadata={"axes": "ZYX"})
    return path


def test_run_summary_names_processed_failed_flagged_and_skipped_acquisitions(cron: Cron) -> None:
    """One striped acquisition (processed, flagged), one broken (failed), one bad name (skipped)."""
    write_striped_volume(cron.inputs / "stripes.tif")
    (cron.inputs / "broken.tif").write_bytes(b"this is not a TIFF file")
    write_volume(cron.inputs / "bad name.tif")
    settle()
    result = cron.run()
    assert result.returncode != 0, describe(result, cron)
    latest = cron.results / "logs" / "cron" / "latest-summary.txt"
    assert f"n2vpipe-cron: run summary: {latest}" in result.stdout, describe(result, cron)
    text = latest.read_text()
    assert text in cron.last_log(), "the run's log ends with its summary"
    lines = text.splitlines()
    assert lines[0] == f"n2vpipe run summary: FAILED (snakemake exit status 1); results {cron.results}"
    assert "  processed 1: stripes" in lines and "  failed 1: broken" in lines, text
    assert f"    broken: logs in {cron.results / 'broken' / 'logs'}" in lines, text
    assert "  flagged 1: stripes" in lines, text
    flagged = next(line for line in lines if line.startswith("    stripes: "))
    assert flagged.startswith("    stripes: correlated_noise"), text
    assert str(cron.results / "stripes" / "qc" / "noise.json") in flagged, text
    assert "  skipped 1" in lines, text
    assert any("bad name.tif: skipped, its name contains ' '" in line for line in lines), text
    assert len(lines) < 20, "a summary read in a minute"

    (cron.inputs / "broken.tif").unlink()
    again = cron.run()
    assert again.returncode == 0 and again.stdout == "", describe(again, cron)
    text = latest.read_text()
    assert text.startswith("n2vpipe run summary: ok;") and text in cron.last_log(), text
    assert "  processed 0" in text and "  failed 0" in text and "  already done, unchanged: 1" in text, text
    assert "  flagged 1: stripes" in text, "a flag stays in the summary while the acquisition is in the input"


def test_usage_errors_exit_2(cron: Cron) -> None:
    result = subprocess.run([str(cron.script)], env=cron.env, capture_output=True, text=True)
    assert result.returncode == 2 and "crontab" in result.stderr
    result = subprocess.run([*cron.command(), "--", "--configfile", "x.yaml"], env=cron.env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "N2VPIPE_CONFIGFILE" in result.stderr


def test_skipped_input_is_mailed_once_new_ones_again_and_gone_ones_forgotten(cron: Cron) -> None:
    state = cron.results / "logs" / "cron" / "skipped-inputs.reported"
    write_volume(cron.inputs / "bad name.tif")
    first = cron.run()
    assert first.returncode == 0, describe(first, cron)
    assert "inputs skipped" in first.stdout and "bad name.tif: skipped, its name contains ' '" in first.stdout
    assert "bad name.tif" in state.read_text()

    second = cron.run()
    assert second.returncode == 0 and second.stdout == "", describe(second, cron)
    assert "bad name.tif" in cron.last_log(), "each run's log still names it"

    (cron.inputs / "gone.tif").symlink_to(cron.inputs / "moved-away.tif")
    third = cron.run()
    assert third.returncode == 0, describe(third, cron)
    assert "gone.tif: skipped, it is a symbolic link" in third.stdout and "bad name.tif" not in third.stdout

    (cron.inputs / "bad name.tif").unlink()
    fourth = cron.run()
    assert fourth.returncode == 0 and fourth.stdout == "", describe(fourth, cron)
    assert "bad name.tif" not in state.read_text(), "a skip that went away is forgotten"
    write_volume(cron.inputs / "bad name.tif")
    fifth = cron.run()
    assert "bad name.tif" in fifth.stdout and "gone.tif" not in fifth.stdout, describe(fifth, cron)

    # A failed run reports its new skips once too, and not the known ones.
    (cron.inputs / "broken.tif").write_bytes(b"this is not a TIFF file")
    write_volume(cron.inputs / "-dash.tif")
    settle()
    sixth = cron.run()
    assert sixth.returncode != 0 and "run FAILED" in sixth.stdout, describe(sixth, cron)
    assert sixth.stdout.count("-dash.tif") == 1 and "starts with '-'" in sixth.stdout, sixth.stdout
    assert "bad name.tif" not in sixth.stdout and "gone.tif" not in sixth.stdout, sixth.stdout
    assert [p.name for p in state.parent.glob("*.tmp")] == [], "the state file is replaced, not left half-written"


@pytest.mark.parametrize("results", ["incoming/results", "incoming", "."])
def test_results_overlapping_inputs_is_refused_before_anything_is_written(cron: Cron, tmp_path: Path,
                                                                          results: str) -> None:
    write_volume(cron.inputs / "g.tif")
    before = sorted(p.name for p in cron.inputs.iterdir())
    command = cron.command()
    command[-1] = str(tmp_path / results)
    result = subprocess.run(command, env=cron.env, cwd=Path.home(), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "overlap" in lines[0] and str(cron.inputs) in lines[0], result.stderr
    assert sorted(p.name for p in cron.inputs.iterdir()) == before


def test_results_that_cannot_be_created_are_named(cron: Cron, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the results should go")
    command = cron.command()
    command[-1] = str(tmp_path / "blocker" / "results")
    result = subprocess.run(command, env=cron.env, cwd=Path.home(), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result
    assert result.stderr == (f"n2vpipe-cron: cannot create or write the results folder {command[-1]}; "
                             "fix its permissions or mount, or choose another\n")
