"""What the workflow imports while Snakemake parses it (every run, dry run and cluster job) is light:
the standard library and n2vpipe's discovery, lock and source-identity code, no numerical stack."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

HEAVY = ("numpy", "zarr", "tifffile", "torch", "dask", "matplotlib", "numcodecs", "imagecodecs")


def parse_time_modules() -> list[str]:
    """The n2vpipe modules the Snakefile and workflow/rules/*.smk import at their top level."""
    sources = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    return sorted({match for source in sources
                   for match in re.findall(r"^from (n2vpipe[\w.]*) import", source.read_text(), re.MULTILINE)})


def test_the_workflow_imports_n2vpipe_modules_at_parse_time() -> None:
    assert {"n2vpipe.discover", "n2vpipe.layout", "n2vpipe.lock", "n2vpipe.source"} <= set(parse_time_modules())


def test_parse_time_imports_load_no_numerical_library() -> None:
    program = (f"import sys\nfor name in {parse_time_modules()!r}: __import__(name)\n"
               f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
