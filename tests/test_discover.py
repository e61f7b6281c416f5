"""Unit tests of input discovery and the folder checks (n2vpipe.discover): each bad input is skipped
by name with its reason, and the input/results folders are checked before any work."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from snakemake.io import PeriodicityDetector

import n2vpipe
from n2vpipe.discover import (
    SAFE_NAME,
    SkippedInput,
    discover_acquisitions,
    folder_problems,
    name_problem,
    overlap_problem,
    unmatched_overrides,
    unwritable_problem,
)
from n2vpipe.errors import InputError

PATTERNS = ("*.tif", "*.tiff", "*.ome.zarr")


def reasons(skipped: list[SkippedInput]) -> dict[str, str]:
    """File name -> reason of every skipped input."""
    return {skip.path.name: skip.reason for skip in skipped}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sample_07", None),
        ("_scratch.v2-final", None),
        ("-dash", "starts with '-'"),
        ("-a b", "starts with '-'"),
        ("bad name", "contains ' '"),
        ("it's", "contains \"'\""),
        ('say"hi', "contains '\"'"),
        ("cost$5", "contains '$'"),
        ("a;rm", "contains ';'"),
        ("café", "contains 'é'"),
        ("line\nbreak", "contains '\\n'"),
        ("sample" + "a" * 32, "ends in 'a' repeated 32 times"),
        ("x" + "ab" * 20, "ends in 'ab' repeated 20 times"),
        ("", "empty"),
        ("logs", "the pipeline's own folder in results_dir (the cron logs)"),
        ("summary.html", "the pipeline's own batch summary page"),
        ("summary.csv", "the pipeline's own batch summary table"),
        ("logs2", None),
    ],
)
def test_name_problem_gives_the_right_reason(name: str, expected: str | None) -> None:
    problem = name_problem(name)
    if expected is None:
        assert problem is None
        assert re.fullmatch(SAFE_NAME, name), "an accepted name must pass the rules' wildcard constraint"
    else:
        assert problem is not None and expected in problem, problem


@pytest.mark.parametrize("name", ["s" + "a" * 19, "s" + "a" * 20, "x" + "ab" * 19, "x" + "ab" * 20,
                                  "a" * 40, "plain_name_1234567890123456789"])
def test_periodic_names_are_exactly_those_snakemake_refuses(name: str) -> None:
    refused_by_snakemake = PeriodicityDetector().is_periodic(name) is not None
    problem = name_problem(name)
    assert (problem is not None and "PeriodicWildcardError" in problem) == refused_by_snakemake


@pytest.fixture
def inputs(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    yield folder


def test_good_input_is_kept_beside_bad_ones(inputs: Path) -> None:
    (inputs / "good.tif").write_bytes(b"II*\0")
    for name in ("bad name.tif", "-dash.tif", "sample" + "a" * 32 + ".tif", "x$.tif"):
        (inputs / name).write_bytes(b"II*\0")
    found, skipped = discover_acquisitions(inputs, PATTERNS)
    assert found == {"good": inputs / "good.tif"}
    assert set(reasons(skipped)) == {"bad name.tif", "-dash.tif", "sample" + "a" * 32 + ".tif", "x$.tif"}
    assert "starts with '-'" in reasons(skipped)["-dash.tif"]
    assert "invalid" not in reasons(skipped)["-dash.tif"] and "contains" not in reasons(skipped)["-dash.tif"]


def test_unreadable_inputs_are_skipped_with_their_reason(inputs: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "elsewhere.tif", inputs / "gone.tif")
    os.mkfifo(inputs / "pipe.tif")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(inputs / "sock.tif"))
        (inputs / "notes.tif").mkdir()
        (inputs / "notes.tif" / "readme.txt").write_text("not an image")
        (inputs / "planes.tif").mkdir()
        (inputs / "planes.tif" / "z000.tif").write_bytes(b"II*\0")
        (inputs / "arriving.tif").mkdir()
        found, skipped = discover_acquisitions(inputs, PATTERNS)
    why = reasons(skipped)
    assert set(found) == {"planes", "arriving"}
    assert "symbolic link" in why["gone.tif"] and str(tmp_path / "elsewhere.tif") in why["gone.tif"]
    assert "named pipe" in why["pipe.tif"]
    assert "socket" in why["sock.tif"]
    assert "neither .tif/.tiff plane files nor OME-Zarr" in why["notes.tif"]


DISCOVER_AND_PRINT = """
import json
import os
import sys
from n2vpipe.discover import discover_acquisitions, snakemake_periodicity
snakemake_periodicity()  # its lazy import, done while this checkout is readable
if os.geteuid() == 0:  # root reads whatever the mode bits say: discover as user nobody
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
found, skipped = discover_acquisitions(sys.argv[1], ["*.tif"])
print(json.dumps([sorted(found), {skip.path.name: skip.reason for skip in skipped}]))
"""


def test_file_without_read_permission_is_skipped() -> None:
    """The process drops to user nobody after its imports, so the checkout may live anywhere (a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="n2vpipe-perm-", dir="/tmp"))  # reachable by that user
    try:
        folder.chmod(0o755)
        (folder / "open.tif").write_bytes(b"II*\0")
        (folder / "open.tif").chmod(0o644)
        (folder / "locked.tif").write_bytes(b"II*\0")
        (folder / "locked.tif").chmod(0)
        src = Path(n2vpipe.__file__).parents[1]
        result = subprocess.run([sys.executable, "-c", DISCOVER_AND_PRINT, str(folder)],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)})
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 0, result.stderr
    found, skipped = json.loads(result.stdout)
    assert found == ["open"] and list(skipped) == ["locked.tif"]
    assert skipped["locked.tif"].startswith("it cannot be read (permission denied)")


def test_name_claimed_twice_keeps_the_first(inputs: Path) -> None:
    (inputs / "a.tif").write_bytes(b"II*\0")
    (inputs / "a.ome.tif").write_bytes(b"II*\0")
    found, skipped = discover_acquisitions(inputs, PATTERNS)
    assert found == {"a": inputs / "a.ome.tif"}
    assert "already taken by" in reasons(skipped)["a.tif"]


def test_messages_are_one_line_and_name_the_input(inputs: Path) -> None:
    (inputs / "two\nlines.tif").write_bytes(b"II*\0")
    (inputs / "x y.tif").write_bytes(b"II*\0")
    _, skipped = discover_acquisitions(inputs, PATTERNS)
    messages = sorted(skip.message() for skip in skipped)
    assert all("\n" not in message for message in messages)
    assert messages[0].startswith("'") and "two\\nlines.tif': skipped, its name contains '\\n'" in messages[0]
    assert messages[1].startswith(f"{inputs / 'x y.tif'}: skipped, its name contains ' '")


def test_missing_input_dir_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover_acquisitions(tmp_path / "nowhere", PATTERNS)


@pytest.mark.parametrize(("results", "relation"), [("in", "is the same folder as"), ("in/out", "lies inside"),
                                                   (".", "contains")])
def test_results_overlapping_inputs_is_refused(tmp_path: Path, results: str, relation: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in").mkdir()
    monkeypatch.chdir(tmp_path)
    problem = overlap_problem("in", results)
    assert problem is not None and relation in problem
    assert f"results_dir {results} (= " in problem and f"input_dir in (= {tmp_path / 'in'})" in problem


def test_overlap_is_seen_through_symbolic_links(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "in", tmp_path / "link")
    problem = overlap_problem(tmp_path / "in", tmp_path / "link" / "out")
    assert problem is not None and "lies inside" in problem and str(tmp_path / "link" / "out") in problem
    assert overlap_problem(tmp_path / "in", tmp_path / "input2") is None


def test_results_that_cannot_be_created_are_refused(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file")
    problem = unwritable_problem(tmp_path / "blocker")
    assert problem is not None and "exists and is not a folder" in problem
    problem = unwritable_problem(tmp_path / "blocker" / "sub" / "results")
    assert problem is not None and f"{tmp_path / 'blocker'} is a file" in problem
    assert unwritable_problem(tmp_path / "new" / "results") is None
    assert not (tmp_path / "new").exists(), "a check must not create the folder"
    (tmp_path / "existing").mkdir()
    assert unwritable_problem(tmp_path / "existing") is None
    assert list((tmp_path / "existing").iterdir()) == [], "the write test leaves nothing behind"


def test_results_on_a_read_only_mount_are_refused(read_only_mount: Path) -> None:
    problem = unwritable_problem(read_only_mount)
    assert problem is not None and "cannot be written in" in problem and str(read_only_mount) in problem
    problem = unwritable_problem(read_only_mount / "results")
    assert problem is not None and f"{read_only_mount} is not writable" in problem


def test_folder_problems_gives_one_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    assert folder_problems(tmp_path / "in", tmp_path / "results") == []
    assert len(folder_problems(tmp_path / "in", tmp_path / "in" / "results")) == 1
    missing = folder_problems(tmp_path / "nowhere", tmp_path / "results")
    assert len(missing) == 1 and str(tmp_path / "nowhere") in missing[0]


def test_override_typo_suggests_the_closest_input_name() -> None:
    warnings = unmatched_overrides(["sample_07", "sampel_08", "zzz"], {"sample_07", "sample_08", "other"})
    assert len(warnings) == 2
    assert "'sampel_08' matches no input" in warnings[0] and "did you mean 'sample_08'?" in warnings[0]
    assert "'zzz' matches no input" in warnings[1] and "no input has a similar name" in warnings[1]
