"""The cron run summary (n2vpipe.run_summary) from a real results/summary.csv and run log."""

from __future__ import annotations

import os
import time
from pathlib import Path

from n2vpipe.run_summary import main, render, summarise_run
from n2vpipe.summary import COLUMNS, write_summary

DISCOVERY = "n2vpipe: discovery: 2 acquisition(s) found in /in, 0 input(s) skipped\n"


def row(acq: str, status: str = "done", flags: str = "") -> dict[str, str]:
    return {**dict.fromkeys(COLUMNS, ""), "acquisition": acq, "status": status, "flags": flags}


def finished(results: Path, acq: str) -> None:
    (results / acq / "qc").mkdir(parents=True)
    (results / acq / "qc" / "metrics.json").write_text("{}")


def test_table_of_an_earlier_run_is_not_this_runs_outcome(tmp_path: Path) -> None:
    """A run refused before discovery (no new table) reports nothing processed and says why."""
    write_summary(tmp_path / "summary.csv", [row("a"), row("b", "unfinished")])
    old = time.time() - 600
    os.utime(tmp_path / "summary.csv", (old, old))
    summary = summarise_run(tmp_path, "n2vpipe: /in and /in/out overlap\n", time.time() - 5, 1)
    assert not summary.discovered and summary.failed == [] and summary.unchanged == []
    assert "stopped before it looked at the inputs" in render(summary, tmp_path / "run.log")


def test_nothing_to_do_lists_the_last_tables_finished_rows_as_unchanged(tmp_path: Path) -> None:
    write_summary(tmp_path / "summary.csv", [row("a", flags="checkerboard"), row("gone", "unfinished")])
    old = time.time() - 600
    os.utime(tmp_path / "summary.csv", (old, old))
    log = DISCOVERY + "Nothing to be done (all requested files are present and up to date).\n"
    summary = summarise_run(tmp_path, log, time.time() - 5, 0)
    assert summary.unchanged == ["a"] and summary.failed == [] and summary.processed == []
    assert summary.flagged == {"a": ["checkerboard"]}


def test_cli_writes_processed_failed_flagged_and_waiting(tmp_path: Path, capsys) -> None:
    start = time.time() - 1
    finished(tmp_path, "new")
    write_summary(tmp_path / "summary.csv", [row("new", flags="correlated_noise bias"), row("bad", "unfinished")])
    log = tmp_path / "run.log"
    log.write_text(DISCOVERY + "n2vpipe: late: not complete yet (changed 2s ago); left for a later run\n")
    out = tmp_path / "latest-summary.txt"
    main(["--results", str(tmp_path), "--log", str(log), "--since", str(start), "--exit-status", "1",
          "--output", str(out)])
    text = out.read_text()
    assert capsys.readouterr().out == text
    lines = text.splitlines()
    assert lines[0] == f"n2vpipe run summary: FAILED (snakemake exit status 1); results {tmp_path}"
    assert "  processed 1: new" in lines and "  failed 1: bad" in lines
    assert (f"    new: correlated_noise, bias; see {tmp_path}/new/qc/noise.json, {tmp_path}/new/qc/metrics.json, "
            f"{tmp_path}/new/qc/comparison.png") in lines
    assert "    late (changed 2s ago)" in lines
