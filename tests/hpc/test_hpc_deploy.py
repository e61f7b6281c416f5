"""A lab deploys n2vpipe as a Snakemake module into an empty project folder of its own (what
`snakedeploy deploy-workflow` writes: a Snakefile with `module` and `use rule *`, and a copy of
config/) and runs the demo there with its own config, from a Python that has n2vpipe's
dependencies but not n2vpipe itself.

conda cannot be fetched on the test machines, so the rules' conda environment is not built here;
tests/test_environment.py holds envs/n2vpipe.yaml to pyproject.toml and to installing n2vpipe."""

from __future__ import annotations

import shutil
import site
import subprocess
import venv
from pathlib import Path

import pytest
import tifffile
import zarr

from .conftest import REPO, copy_workflow, output_of, write_config

pytestmark = pytest.mark.workflow

MODULE_SNAKEFILE = """configfile: "config/config.yaml"


module n2vpipe:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from n2vpipe
"""


@pytest.fixture(scope="module")
def python_without_n2vpipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment that sees this one's packages through a .pth line, whose own .pth files
    (among them the editable install of n2vpipe) Python does not process: everything but n2vpipe."""
    env = tmp_path_factory.mktemp("bare-python")
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "n2vpipe-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_a_module_deployed_into_an_empty_folder_runs_the_demo_there(tmp_path: Path,
                                                                     python_without_n2vpipe: Path) -> None:
    release = copy_workflow(tmp_path / "n2vpipe-release")
    lab = tmp_path / "lab-project"
    (lab / "workflow").mkdir(parents=True)
    (lab / "workflow" / "Snakefile").write_text(MODULE_SNAKEFILE.format(snakefile=release / "Snakefile"))
    shutil.copytree(release / "config", lab / "config")
    own_config = write_config(lab / "config" / "lab.yaml", REPO / "data" / "demo", Path("results"))
    check = subprocess.run([str(python_without_n2vpipe), "-c", "import snakemake, torch, zarr; import n2vpipe"],
                           capture_output=True, text=True)
    assert "No module named 'n2vpipe'" in check.stderr, "the test Python must have every dependency but n2vpipe"

    result = subprocess.run([str(python_without_n2vpipe), "-m", "snakemake", "--cores", "2",
                             "--configfile", str(own_config)], cwd=lab, capture_output=True, text=True,
                            timeout=600, stdin=subprocess.DEVNULL)

    assert result.returncode == 0, output_of(result)
    demo = sorted(path.stem for path in (REPO / "data" / "demo").glob("*.tif"))
    acquisitions = [path.name for path in (lab / "results").iterdir() if path.is_dir() and path.name != "logs"]
    assert sorted(acquisitions) == demo
    for name in demo:
        with tifffile.TiffFile(REPO / "data" / "demo" / f"{name}.tif") as tif:
            expected_shape = tif.series[0].shape
        denoised = zarr.open_group(lab / "results" / name / "denoised.ome.zarr", mode="r")["0"]
        assert sorted(denoised.shape) == sorted(expected_shape)
        assert (lab / "results" / name / "qc" / "comparison.png").is_file()
    assert not (release / "results").exists(), "results go to the lab's folder, not the workflow's"
