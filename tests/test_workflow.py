"""Real snakemake runs of the whole pipeline on small files, as a user would run it."""

from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image
from scipy import ndimage

from conftest import REPO, run_snakemake
from n2vpipe.io import open_ome_zarr, partial_path
from synthetic import poisson_gaussian, smooth_blobs, truncated_imagej_stack

pytestmark = pytest.mark.workflow

TINY_CONFIG = {
    "ingest": {"chunks": {"z": 16, "y": 32, "x": 32}},
    "train": {"patch": {"z": 16, "y": 32, "x": 32}, "batch_size": 4, "steps": 80, "base_filters": 8,
              "batch_norm": True,
              "masked_fraction": 0.02, "learning_rate": 0.002, "validate_every": 20, "checkpoint_every": 40},
    "predict": {"block": {"z": 16, "y": 32, "x": 32}, "pyramid_levels": 2, "jobs": 2},
    "threads": {"ingest": 1, "train": 2, "predict": 2},
    "acquisitions": {"twochannel": {"predict": {"output_dtype": "uint16"}},
                     "blobs": {"export": {"bioimageio": True}}, "flat": {"export": {"bioimageio": True}}},
}


def write_config(folder: Path, **overrides: object) -> Path:
    """A config file pointing at ``folder/in`` and ``folder/results``."""
    config = {"input_dir": str(folder / "in"), "results_dir": str(folder / "results"), **TINY_CONFIG, **overrides}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, object]:
    """One pipeline run over a 3D volume with known ground truth, a 2D image, a ZCYX stack, and damaged or
    unsupported files: one that is no TIFF, an ImageJ stack cut short after 3 of its 10 planes (tifffile reads it as
    a 2D image of its first plane), a complex-valued TIFF, a float TIFF with a NaN, and a stack of two planes,
    fewer than the network pools Z to."""
    folder = tmp_path_factory.mktemp("workflow")
    (folder / "in").mkdir()
    clean = smooth_blobs((32, 64, 64), seed=0)
    tifffile.imwrite(folder / "in" / "blobs.tif", poisson_gaussian(clean, seed=1), imagej=True,
                     resolution=(1 / 0.1, 1 / 0.1), metadata={"axes": "ZYX", "spacing": 0.25, "unit": "um"})
    tifffile.imwrite(folder / "in" / "flat.tif", poisson_gaussian(smooth_blobs((64, 64), seed=2), seed=3))
    tifffile.imwrite(folder / "in" / "twochannel.tif",
                     np.stack([poisson_gaussian(smooth_blobs((16, 32, 32), seed=s), seed=s) for s in (4, 5)], axis=1),
                     imagej=True, metadata={"axes": "ZCYX", "spacing": 0.5})
    write_image(poisson_gaussian(smooth_blobs((16, 32, 32), seed=6), seed=7), str(folder / "in" / "inplace.ome.zarr"),
                axes="zyx", scale_factors=(), scale={"z": 0.5, "y": 0.2, "x": 0.2})
    (folder / "in" / "broken.tif").write_bytes(b"not a tiff")
    truncated_imagej_stack(folder / "in" / "cutshort.tif", planes=10, kept=3)
    tifffile.imwrite(folder / "in" / "spectrum.tif", np.ones((4, 16, 16), np.complex64), photometric="minisblack")
    with_nan = np.full((4, 16, 16), 100, np.float32)
    with_nan[1, 2, 3] = np.nan
    tifffile.imwrite(folder / "in" / "nans.tif", with_nan, photometric="minisblack")
    tifffile.imwrite(folder / "in" / "twoplanes.tif", poisson_gaussian(smooth_blobs((2, 32, 32), seed=8), seed=9))
    (folder / "in" / "bad name!.tif").write_bytes(b"never read")
    config = write_config(folder)
    result = run_snakemake(["--configfile", str(config), "--cores", "2", "--keep-going"], cwd=folder,
                           expect_success=False)
    return folder, clean + 100, result


def test_failed_input_is_named_and_costs_no_other_acquisition(finished_run) -> None:
    folder, _, result = finished_run
    assert result.returncode != 0
    log = (folder / "results" / "broken" / "logs" / "ingest.log").read_text()
    assert re.search(r"broken\.tif: not a readable TIFF", log)
    assert not (folder / "results" / "broken" / "raw.ome.zarr").exists()
    assert "bad name!.tif: skipped" in result.stderr
    for acq in ("blobs", "flat", "twochannel", "inplace"):
        assert (folder / "results" / acq / "denoised.ome.zarr").is_dir(), acq


@pytest.mark.parametrize(("acq", "problem"), [
    ("broken", "not a readable TIFF"),
    ("cutshort", "ImageJ metadata claims 10 images (10 slices, 1 channels, 1 frames) but the file holds a YX series"),
    ("spectrum", "voxels are complex (complex64), which n2vpipe refuses"),
    ("nans", "1 voxels are NaN or infinite, which n2vpipe refuses"),
])
def test_each_damaged_input_fails_alone_with_one_error_line_and_nothing_published(finished_run, acq: str,
                                                                                  problem: str) -> None:
    """The ingest log holds exactly one error line, naming the file and the problem; no output, finished or
    partial, exists for that acquisition; every good acquisition finished (see above)."""
    folder, _, result = finished_run
    results = folder / "results" / acq
    errors = [line for line in (results / "logs" / "ingest.log").read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{folder / 'in' / acq}.tif: {problem}" in errors[0], errors
    published = [p.name for p in results.iterdir() if p.name.endswith((".zarr", ".partial", ".tif"))
                 or p.name in ("model", "qc")]
    assert not published and not partial_path(results / "raw.ome.zarr").exists(), published
    assert (folder / "results" / "blobs" / "denoised.ome.zarr").is_dir()


def test_an_image_too_small_for_the_network_fails_training_alone(finished_run) -> None:
    """Two planes ingest, then training fails with one error line naming the raw store; no model and no
    denoised output appear, and every good acquisition finished."""
    folder, _, _ = finished_run
    results = folder / "results" / "twoplanes"
    errors = [line for line in (results / "logs" / "train.log").read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{results / 'raw.ome.zarr'}: the image is 2 voxels along z" in errors[0], errors
    assert not (results / "model").exists() and not (results / "denoised.ome.zarr").exists()
    for acq in ("blobs", "flat", "twochannel", "inplace"):
        assert (folder / "results" / acq / "denoised.ome.zarr").is_dir(), acq


def test_ome_zarr_input_is_read_in_place(finished_run) -> None:
    folder, _, _ = finished_run
    assert not (folder / "results" / "inplace" / "raw.ome.zarr").exists(), "an OME-Zarr input must not be copied"
    raw, raw_meta = open_ome_zarr(folder / "in" / "inplace.ome.zarr")
    den, den_meta = open_ome_zarr(folder / "results" / "inplace" / "denoised.ome.zarr")
    assert (den_meta.axes, den_meta.shape, den_meta.scale) == ("zyx", (16, 32, 32), (0.5, 0.2, 0.2))
    assert np.isfinite(den[:]).all() and den[:].std() < raw[:].std()


def test_inference_split_into_jobs_each_with_its_own_log(finished_run) -> None:
    folder, _, _ = finished_run
    logs = sorted(p.name for p in (folder / "results" / "blobs" / "logs").glob("predict_part*.log"))
    assert logs == ["predict_part0-of-2.log", "predict_part1-of-2.log"]
    texts = [(folder / "results" / "blobs" / "logs" / name).read_text() for name in logs]
    assert all("8 blocks" in text and "M voxels/s" in text for text in texts), texts
    assert not (folder / "results" / "blobs" / ".predict_parts").exists() or \
        not list((folder / "results" / "blobs" / ".predict_parts").iterdir())


def test_integer_output_is_rescaled_with_its_mapping_stored(finished_run) -> None:
    folder, _, _ = finished_run
    path = folder / "results" / "twochannel" / "denoised.ome.zarr"
    den, _ = open_ome_zarr(path)
    raw, _ = open_ome_zarr(folder / "results" / "twochannel" / "raw.ome.zarr")
    mapping = zarr.open_group(str(path), mode="r").attrs["n2vpipe"]["intensity"]
    assert den.dtype == np.uint16 and mapping["dtype"] == "uint16"
    for channel in range(2):
        stored = den[channel].astype(np.float64)
        assert stored.max() > 1000, "the rescaled values must use the integer range"
        decoded = mapping["offset"][channel] + mapping["scale"][channel] * stored
        assert abs(np.median(decoded) - np.median(raw[channel])) < 0.2 * raw[channel][:].std()


def test_outputs_keep_shape_axes_and_voxel_size(finished_run) -> None:
    folder, _, _ = finished_run
    expected = {"blobs": ("zyx", (32, 64, 64)), "flat": ("yx", (64, 64)), "twochannel": ("czyx", (2, 16, 32, 32))}
    for acq, (axes, shape) in expected.items():
        raw, raw_meta = open_ome_zarr(folder / "results" / acq / "raw.ome.zarr")
        den, den_meta = open_ome_zarr(folder / "results" / acq / "denoised.ome.zarr")
        assert (raw_meta.axes, raw_meta.shape) == (axes, shape)
        assert (den_meta.axes, den_meta.shape, den_meta.scale) == (axes, shape, raw_meta.scale)
        assert den.dtype == (np.uint16 if acq == "twochannel" else np.float32) and np.isfinite(den[:]).all()
        node = next(iter(Reader(parse_url(str(folder / "results" / acq / "denoised.ome.zarr")))()))
        assert [a["name"] for a in node.metadata["axes"]] == list(axes)
        assert node.data[0].shape == shape
    _, blobs_meta = open_ome_zarr(folder / "results" / "blobs" / "denoised.ome.zarr")
    assert blobs_meta.scale == pytest.approx((0.25, 0.1, 0.1))


def test_denoised_is_closer_to_the_clean_signal(finished_run) -> None:
    folder, clean, _ = finished_run
    raw, _ = open_ome_zarr(folder / "results" / "blobs" / "raw.ome.zarr")
    den, _ = open_ome_zarr(folder / "results" / "blobs" / "denoised.ome.zarr")
    mse_raw = np.mean((raw[:].astype(np.float32) - clean) ** 2)
    mse_denoised = np.mean((den[:] - clean) ** 2)
    assert mse_denoised < 0.5 * mse_raw, (mse_raw, mse_denoised)


def test_tiff_export_model_and_qc_exist(finished_run) -> None:
    folder, _, _ = finished_run
    acq = folder / "results" / "twochannel"
    with tifffile.TiffFile(acq / "denoised.tif") as tif:
        assert tif.series[0].axes == "ZCYX" and tif.series[0].shape == (16, 2, 32, 32)
    assert (acq / "qc" / "comparison.png").stat().st_size > 10_000
    assert (acq / "qc" / "noise.png").stat().st_size > 10_000
    assert [c["channel"] for c in json.loads((acq / "qc" / "noise.json").read_text())["channels"]] == [0, 1]
    assert [c["channel"] for c in json.loads((acq / "qc" / "metrics.json").read_text())["channels"]] == [0, 1]
    assert {"weights.pt", "model.json", "loss.png", "training_log.csv"} <= {p.name for p in (acq / "model").iterdir()}
    assert not list(acq.glob(".*.partial")), "no partial outputs may remain after success"


@pytest.mark.parametrize(("acq", "voxel"), [("blobs", {"z": 0.25, "y": 0.1, "x": 0.1}), ("flat", {"y": 1.0, "x": 1.0})])
def test_bioimageio_export_on_for_an_acquisition_writes_a_valid_package(finished_run, acq: str,
                                                                        voxel: dict[str, float]) -> None:
    """export.bioimageio set for blobs (3D) and flat (2D) only: their packages (which the export job wrote
    only after bioimageio.core's model test passed) load and carry the voxel size; no other acquisition has one."""
    from bioimageio.spec import load_description

    folder, _, _ = finished_run
    results = folder / "results"
    description = load_description(results / acq / "model.bioimageio.zip", perform_io_checks=False)
    assert description.type == "model", description
    axes = {str(axis.id): axis.scale for axis in description.inputs[0].axes if axis.type == "space"}
    assert axes == voxel
    assert "ERROR" not in (results / acq / "logs" / "export_bioimageio.log").read_text()
    assert not (results / "twochannel" / "model.bioimageio.zip").exists()
    assert not (results / "inplace" / "model.bioimageio.zip").exists()


def test_batch_summary_has_a_row_per_acquisition(finished_run) -> None:
    """results/summary.csv, written at the end of a run that failed for some inputs: finished acquisitions
    with their facts, failed ones marked unfinished."""
    folder, _, _ = finished_run
    with open(folder / "results" / "summary.csv", newline="") as handle:
        rows = {row["acquisition"]: row for row in csv.DictReader(handle)}
    assert {"blobs", "flat", "twochannel", "inplace", "broken"} <= set(rows)
    blobs = rows["blobs"]
    assert blobs["status"] == "done" and blobs["shape"] == "32x64x64" and blobs["voxel_size"] == "0.25x0.1x0.1"
    assert int(blobs["train_steps"]) == 80 and blobs["stopped_by"] == "steps"
    assert float(blobs["inference_s"]) > 0 and float(blobs["voxels_per_s"]) > 0
    assert blobs["denoised"].endswith("blobs/denoised.ome.zarr")
    assert rows["broken"]["status"] == "unfinished"


def test_demo_config_dry_run_plans_every_stage(tmp_path: Path) -> None:
    """The demo's config, as `make demo` passes it, plans every stage for every bundled demo acquisition."""
    result = run_snakemake(["-n", "--cores", "2", "--configfile", "config/demo.yaml",
                            "--config", f"results_dir={tmp_path}"], cwd=REPO)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    demo = len(list((REPO / "data" / "demo").glob("*.tif")))
    stages = ("ingest", "train", "predict_part", "predict", "export_tiff", "qc_figure", "noise_check", "qc_metrics")
    assert {k: int(counts.get(k, 0)) for k in stages} == dict.fromkeys(stages, demo)
    assert not (tmp_path / "summary.csv").exists(), "a dry run writes no summary"


def test_noise_correlated_along_x_is_named_in_the_run_log_job_log_and_report(tmp_path: Path) -> None:
    """The noise check of an acquisition with read noise averaged over 3 voxels along X warns, with the
    struct mask to use, in its job log and the run's summary, and its figure is in the report."""
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    read = ndimage.uniform_filter1d(rng.normal(0, 4, (32, 128, 128)), 3, axis=2) * np.sqrt(3)
    tifffile.imwrite(tmp_path / "in" / "striped.tif", (poisson_gaussian(smooth_blobs((32, 128, 128), seed=0), seed=1,
                                                                        read_noise=0) + read).astype(np.float32))
    config = write_config(tmp_path, acquisitions={})
    targets = [str(tmp_path / "results" / "striped" / "qc" / name) for name in ("noise.json", "noise.png")]
    result = run_snakemake(["--configfile", str(config), "--cores", "1", *targets], cwd=tmp_path)
    advice = "train:\n  struct_mask: [[1, 1, 1, 1, 1]]"
    assert "striped: WARNING (qc/noise.json): noise is correlated along X" in result.stdout
    assert advice in result.stdout
    log = (tmp_path / "results" / "striped" / "logs" / "noise_check.log").read_text()
    assert "WARNING" in log and advice in log
    run_snakemake(["--configfile", str(config), "--report", str(tmp_path / "report.zip"), *targets], cwd=tmp_path)
    with zipfile.ZipFile(tmp_path / "report.zip") as report:
        assert any(name.endswith("noise.png") for name in report.namelist())


def test_the_workflow_passes_snakemake_lint() -> None:
    """`snakemake --lint` (what the Snakemake workflow catalog checks) finds nothing."""
    result = run_snakemake(["--lint", "--configfile", "config/demo.yaml"], cwd=REPO)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
