"""The batch summary page in `snakemake --report`, from a real run of two tiny acquisitions."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from .conftest import copy_workflow, output_of, snakemake, write_config, write_volume

pytestmark = pytest.mark.workflow


def test_report_has_the_batch_summary_table_with_one_row_per_acquisition(tmp_path: Path) -> None:
    repo = copy_workflow(tmp_path / "repo")
    inputs, results = tmp_path / "in", tmp_path / "results"
    for seed, name in enumerate(("alpha", "beta")):
        write_volume(inputs / f"{name}.tif", seed=seed)
    config = write_config(tmp_path / "site.yaml", inputs, results)
    run = snakemake(repo, "--cores", "2", "--configfile", str(config))
    assert run.returncode == 0, output_of(run)
    page = (results / "summary.html").read_text()
    report = snakemake(repo, "--cores", "2", "--configfile", str(config), "--report", str(tmp_path / "report.zip"))
    assert report.returncode == 0, output_of(report)
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        names = [name for name in archive.namelist() if name.endswith("summary.html")]
        assert len(names) == 1, archive.namelist()
        packed = archive.read(names[0]).decode()
        index = "\n".join(archive.read(name).decode(errors="replace") for name in archive.namelist()
                          if name.endswith((".js", ".html")) and name not in names)
    assert packed == page
    rows = re.findall(r"<tr(?: class=\"attention\")?><td>([^<]*)</td>", packed)
    assert sorted(rows) == ["alpha", "beta"], packed
    assert packed.count("<tr") == 3, "a header and one row per acquisition"
    assert "Batch summary" in index and "one row per acquisition" in index, "its category and caption"
