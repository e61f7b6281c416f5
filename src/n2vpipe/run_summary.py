"""The cron run summary: what one run processed, what failed, was skipped or waits, and what needs a look.

Built from ``results/summary.csv`` (:mod:`n2vpipe.summary`, rewritten at the end of every run) and the
run's log (the ``n2vpipe: ...`` lines the workflow writes while it discovers inputs), for
``workflow/cron/n2vpipe-cron.sh``, which appends it to the run's log and keeps it as
``logs/cron/latest-summary.txt``. Run ``python -m n2vpipe.run_summary --help``.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from n2vpipe.io import write_bytes_atomic

SKIPPED_LINE = re.compile(r"^n2vpipe: (.*: skipped, .*)$")
WAITING_LINE = re.compile(r"^n2vpipe: (\S+): not complete yet \((.*)\); left for a later run$")
DISCOVERY_LINE = re.compile(r"^n2vpipe: discovery: ")
NOTHING_TO_DO_LINE = re.compile(r"^Nothing to be done")
# Where each flag's numbers are (docs/qc.md); every flagged acquisition also has qc/comparison.png.
FLAG_FILES = {"correlated_noise": "qc/noise.json"}
METRICS_FILE = "qc/metrics.json"


@dataclass
class RunSummary:
    """One run's outcome per acquisition (names), with the inputs it skipped or left waiting."""

    results: Path
    exit_status: int
    discovered: bool
    processed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    flagged: dict[str, list[str]] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the batch summary at ``path``; none when there is no such file."""
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def written_since(path: Path, since: float) -> bool:
    """Whether ``path`` exists and was modified at or after ``since``."""
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def summarise_run(results: Path, log_text: str, since: float, exit_status: int) -> RunSummary:
    """The summary of the run that started at ``since`` (epoch seconds), logged ``log_text`` and ended
    with ``exit_status``, whose results folder is ``results``."""
    lines = log_text.splitlines()
    summary = RunSummary(results=results, exit_status=exit_status,
                         discovered=any(DISCOVERY_LINE.match(line) for line in lines))
    summary.skipped = sorted({m.group(1) for m in map(SKIPPED_LINE.match, lines) if m})
    summary.waiting = sorted({f"{m.group(1)} ({m.group(2)})" for m in map(WAITING_LINE.match, lines) if m})
    table = results / "summary.csv"
    if written_since(table, since):
        rows = read_rows(table)
    elif any(NOTHING_TO_DO_LINE.match(line) for line in lines):
        # Snakemake skips its onsuccess hook when every output is up to date: the table of the
        # last run that did something holds them, done (an unfinished row there is an input gone since).
        rows = [row for row in read_rows(table) if row["status"] == "done"]
    else:
        rows = []  # an older table describes an earlier run; this one stopped before its end
    for row in rows:
        acq = row["acquisition"]
        if row["status"] != "done":
            summary.failed.append(acq)
        elif written_since(results / acq / METRICS_FILE, since):
            summary.processed.append(acq)
        else:
            summary.unchanged.append(acq)
        if row["flags"]:
            summary.flagged[acq] = row["flags"].split()
    return summary


def where_to_look(folder: Path, flags: Sequence[str]) -> list[str]:
    """The files holding the numbers behind ``flags``, then the QC figure."""
    files = [FLAG_FILES.get(flag, METRICS_FILE) for flag in flags]
    return [str(folder / name) for name in dict.fromkeys([*files, "qc/comparison.png"])]


def names(items: Sequence[str]) -> str:
    """``count: a, b, c`` (``0`` alone when empty)."""
    return f"{len(items)}: {', '.join(items)}" if items else "0"


def render(summary: RunSummary, log: Path) -> str:
    """The summary as a few lines a person reads in a minute."""
    state = "ok" if summary.exit_status == 0 else f"FAILED (snakemake exit status {summary.exit_status})"
    out = [f"n2vpipe run summary: {state}; results {summary.results}"]
    if not summary.discovered:
        out.append("  the run stopped before it looked at the inputs; the log says why")
    out.append(f"  processed {names(summary.processed)}")
    out.append(f"  failed {names(summary.failed)}")
    out += [f"    {acq}: logs in {summary.results / acq / 'logs'}" for acq in summary.failed]
    out.append(f"  flagged {names(list(summary.flagged))}")
    for acq, flags in summary.flagged.items():
        out.append(f"    {acq}: {', '.join(flags)}; see {', '.join(where_to_look(summary.results / acq, flags))}")
    out.append(f"  skipped {len(summary.skipped)}")
    out += [f"    {line}" for line in summary.skipped]
    out.append(f"  waiting (not complete yet) {len(summary.waiting)}")
    out += [f"    {line}" for line in summary.waiting]
    out.append(f"  already done, unchanged: {len(summary.unchanged)}")
    out.append(f"  table: {summary.results / 'summary.csv'} (docs/qc.md); full log: {log}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Write the summary of one cron run to ``--output`` (atomically) and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="the run's results folder")
    parser.add_argument("--log", type=Path, required=True, help="the run's log (snakemake's output)")
    parser.add_argument("--since", type=float, required=True, help="when the run started, epoch seconds")
    parser.add_argument("--exit-status", type=int, required=True, help="snakemake's exit status")
    parser.add_argument("--output", type=Path, required=True, help="where to write the summary")
    args = parser.parse_args(argv)
    log_text = args.log.read_text(errors="replace")
    text = render(summarise_run(args.results, log_text, args.since, args.exit_status), args.log)
    write_bytes_atomic(args.output, text.encode())
    print(text, end="")


if __name__ == "__main__":
    main()
