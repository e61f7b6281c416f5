"""What is imported often stays light: the workflow's parse-time imports (every run, dry run and cluster
job) load no numerical stack, and the inference code (every dask worker) loads no plotting or training."""

from __future__ import annotations

import ast
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


def loaded_after_importing(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``modules``."""
    program = (f"import sys\nfor name in {modules!r}: __import__(name)\n"
               f"print(sorted(m for m in {watched!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    return ast.literal_eval(loaded.stdout)


def test_parse_time_imports_load_no_numerical_library() -> None:
    assert loaded_after_importing(parse_time_modules(), HEAVY) == []


def test_the_inference_code_loads_neither_plotting_nor_training() -> None:
    assert loaded_after_importing(["n2vpipe.predict"], ("matplotlib", "n2vpipe.train", "n2vpipe.qc")) == []
