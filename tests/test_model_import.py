"""model: another acquisition's model folder or an n2vpipe package, checked against the acquisition and copied."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import tifffile
import yaml

from conftest import run_snakemake
from n2vpipe.bioimageio_export import export_bioimageio
from n2vpipe.errors import InputError
from n2vpipe.io import partial_path
from n2vpipe.model_import import import_model
from n2vpipe.model_io import WEIGHTS_FILE, load_model
from synthetic import poisson_gaussian, smooth_blobs
from tiny import noisy_raw_zarr, qc_figure, tiny_model

CHUNKS = {"z": 8, "y": 32, "x": 32}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3D acquisition with a tiny model trained on it."""
    folder = tmp_path_factory.mktemp("source")
    raw = noisy_raw_zarr(folder, (16, 32, 32), CHUNKS)
    tiny_model(raw, folder / "model", {"z": 8, "y": 16, "x": 16})
    return folder


@pytest.fixture(scope="module")
def other_3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another 3D acquisition (other seed and size) that reuses the model."""
    return noisy_raw_zarr(tmp_path_factory.mktemp("other"), (16, 48, 32), CHUNKS, seed=5)


def test_a_model_folder_is_checked_and_copied(source: Path, other_3d: Path, tmp_path: Path) -> None:
    dst = tmp_path / "imported_model"
    description = import_model(source / "model", other_3d, dst)
    assert description.spatial_axes == "zyx"
    assert (dst / WEIGHTS_FILE).read_bytes() == (source / "model" / WEIGHTS_FILE).read_bytes()
    model, loaded = load_model(dst)
    assert loaded.normalisation == load_model(source / "model")[1].normalisation


def test_an_n2vpipe_package_gives_back_the_same_model(source: Path, other_3d: Path, tmp_path: Path) -> None:
    cover = tmp_path / "cover.png"
    qc_figure(source / "raw.ome.zarr", source / "raw.ome.zarr", cover)
    package = tmp_path / "model.bioimageio.zip"
    export_bioimageio(source / "raw.ome.zarr", source / "model", cover, package, "source")
    dst = tmp_path / "imported_model"
    import_model(package, other_3d, dst)
    assert (dst / WEIGHTS_FILE).read_bytes() == (source / "model" / WEIGHTS_FILE).read_bytes()
    assert load_model(dst)[1].spec == load_model(source / "model")[1].spec


def test_a_3d_model_for_a_2d_acquisition_fails_naming_both(source: Path, tmp_path: Path) -> None:
    flat = noisy_raw_zarr(tmp_path, (32, 32), {"y": 32, "x": 32})
    dst = tmp_path / "imported_model"
    with pytest.raises(InputError, match=rf"{source / 'model'}: the model is 3D for axes zyx, but {flat} has axes yx"):
        import_model(source / "model", flat, dst)
    assert not dst.exists() and not partial_path(dst).exists()


def test_a_package_from_elsewhere_and_a_missing_path_are_refused_by_name(other_3d: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump({"type": "model", "weights": {}}))
    with pytest.raises(InputError, match=r"foreign\.zip: a bioimage\.io package not exported by n2vpipe"):
        import_model(foreign, other_3d, tmp_path / "a")
    with pytest.raises(InputError, match=r"nowhere/model: no such model folder or package"):
        import_model(tmp_path / "nowhere" / "model", other_3d, tmp_path / "b")


@pytest.mark.workflow
def test_an_acquisition_with_model_set_uses_anothers_trained_model_in_a_real_run(tmp_path: Path) -> None:
    """day2 names day1's model/ folder: the run trains day1 only, day2 is denoised with a checked copy of it."""
    (tmp_path / "in").mkdir()
    for seed, name in ((0, "day1"), (3, "day2")):
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", poisson_gaussian(smooth_blobs((16, 32, 32), seed=seed),
                                                                          seed=seed + 1))
    results = tmp_path / "results"
    config = {
        "input_dir": str(tmp_path / "in"), "results_dir": str(results),
        "ingest": {"chunks": CHUNKS},
        "train": {"patch": {"z": 8, "y": 16, "x": 16}, "batch_size": 2, "steps": 4, "base_filters": 4, "depth": 1,
                  "validation_fraction": 0},
        "predict": {"block": CHUNKS, "pyramid_levels": 1},
        "export": {"tiff": False},
        "threads": {"ingest": 1, "train": 1, "predict": 1},
        "acquisitions": {"day2": {"model": str(results / "day1" / "model")}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(["--configfile", str(tmp_path / "config.yaml"), "--cores", "2"], cwd=tmp_path)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout + result.stderr, flags=re.MULTILINE))
    assert (counts["train"], counts["import_model"]) == ("1", "1"), counts
    assert not (results / "day2" / "model").exists()
    imported = results / "day2" / "imported_model"
    assert (imported / WEIGHTS_FILE).read_bytes() == (results / "day1" / "model" / WEIGHTS_FILE).read_bytes()
    assert (results / "day2" / "denoised.ome.zarr").is_dir()
