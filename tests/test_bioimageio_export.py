"""bioimage.io export: a real tiny model packaged, tested by bioimageio.core, and run through its prediction API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import bioimageio.core
import numpy as np
import pytest
import tifffile
import yaml

from n2vpipe import unet
from n2vpipe.bioimageio_export import export_bioimageio
from n2vpipe.errors import InputError
from n2vpipe.ingest import ingest_tiff
from n2vpipe.io import open_ome_zarr, partial_path
from n2vpipe.predict import PredictConfig, predict_volume
from synthetic import poisson_gaussian, smooth_blobs
from tiny import qc_figure, tiny_model

CHUNKS = {"z": 8, "y": 32, "x": 32}
VOXEL = {"z": 0.6, "y": 0.2, "x": 0.2}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt of this process to open an internet connection fails the test (nothing may download)."""
    original = socket.socket.connect

    def refuse(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network connection attempted to {address}")
        original(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An anisotropic acquisition (Z voxels 3x coarser: Z is not pooled) ingested with its voxel size, a tiny model
    trained on it, n2vpipe's prediction of the whole volume and the QC figure."""
    folder = tmp_path_factory.mktemp("bioimageio")
    noisy = poisson_gaussian(smooth_blobs((32, 48, 48), seed=0), seed=1)
    tifffile.imwrite(folder / "noisy.tif", noisy, imagej=True, resolution=(1 / VOXEL["y"], 1 / VOXEL["x"]),
                     metadata={"axes": "ZYX", "spacing": VOXEL["z"], "unit": "um"})
    ingest_tiff(folder / "noisy.tif", folder / "raw.ome.zarr", CHUNKS)
    tiny_model(folder / "raw.ome.zarr", folder / "model", {"z": 8, "y": 16, "x": 16}, steps=4)
    predict_volume(folder / "raw.ome.zarr", folder / "model", folder / "denoised.ome.zarr",
                   PredictConfig(block=CHUNKS, pyramid_levels=1, precision="float32", device="cpu"))
    qc_figure(folder / "raw.ome.zarr", folder / "denoised.ome.zarr", folder / "comparison.png")
    return folder


@pytest.fixture(scope="module")
def package(trained: Path) -> Path:
    """The acquisition's model exported as a bioimage.io package."""
    dst = trained / "model.bioimageio.zip"
    export_bioimageio(trained / "raw.ome.zarr", trained / "model", trained / "comparison.png", dst, "noisy")
    return dst


def rdf(package: Path) -> dict:
    """The package's model description."""
    return yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))


def test_package_passes_bioimageio_cores_model_test_offline(package: Path, no_network: None) -> None:
    """bioimageio.core runs both weights formats on the test block and at other sizes, and compares."""
    summary = bioimageio.core.test_model(package)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    tested = {d.name for d in summary.details}
    assert any("torchscript" in name for name in tested) and any("pytorch_state_dict" in name for name in tested)


def test_package_describes_the_acquisition_and_ships_the_network_source(package: Path, trained: Path) -> None:
    description = rdf(package)
    axes = {axis["id"]: axis for axis in description["inputs"][0]["axes"] if axis["type"] == "space"}
    assert {a: (axes[a]["scale"], axes[a]["unit"]) for a in "zyx"} == {a: (v, "micrometer") for a, v in VOXEL.items()}
    assert axes["z"]["size"]["step"] == 1 and axes["y"]["size"]["step"] == 2  # Z is not pooled
    files = zipfile.ZipFile(package)
    assert files.read("unet.py") == Path(unet.__file__).read_bytes()
    assert files.read(description["covers"][0]["source"]) == (trained / "comparison.png").read_bytes()
    readme = files.read(description["documentation"]["source"]).decode()
    assert '"steps": 4' in readme and "correlated noise" in readme.lower()
    names = [step["id"] for step in description["inputs"][0]["preprocessing"]]
    assert "fixed_zero_mean_unit_variance" in names
    assert [step["id"] for step in description["outputs"][0]["postprocessing"]][0] == "scale_linear"
    raw, meta = open_ome_zarr(trained / "raw.ome.zarr")
    test_input = np.load(files.open(description["inputs"][0]["test_tensor"]["source"]))
    centre = tuple(slice((n - b) // 2, (n - b) // 2 + b) for n, b in zip(meta.spatial_shape, test_input.shape[2:],
                                                                          strict=True))
    np.testing.assert_array_equal(test_input[0, 0], raw[centre])
    assert test_input.shape[2] == 16  # TEST_BLOCK["z"]; 48 in Y and X would fail bioimageio.spec's size check


@pytest.mark.parametrize("blocksize", [None, 0])
def test_package_prediction_equals_n2vpipes_within_1e4_of_the_range(package: Path, trained: Path, no_network: None,
                                                                     blocksize: int | None) -> None:
    """The volume through bioimageio.core's prediction API (its pre- and post-processing; whole, and tiled into
    its smallest blocks with the declared halo) against n2vpipe's tiled prediction, on every voxel farther than
    the halo from the volume border (where the consumer pads the input and n2vpipe's network pads with zeros)."""
    raw, _ = open_ome_zarr(trained / "raw.ome.zarr")
    ours, _ = open_ome_zarr(trained / "denoised.ome.zarr")
    expected = np.asarray(ours[...], dtype=np.float32)
    sample = bioimageio.core.predict(model=package, inputs=np.asarray(raw[...], dtype=np.float32)[None, None],
                                     blocksize_parameter=blocksize)
    theirs = next(iter(sample.members.values())).data.values[0, 0]
    assert theirs.shape == expected.shape
    halo = {axis["id"]: axis["halo"] for axis in rdf(package)["outputs"][0]["axes"] if "halo" in axis}
    interior = tuple(slice(halo[a], n - halo[a]) for a, n in zip("zyx", expected.shape, strict=True))
    assert all(s.stop - s.start >= 4 for s in interior)
    value_range = float(expected.max() - expected.min())
    assert np.abs(theirs[interior] - expected[interior]).max() <= 1e-4 * value_range


def test_unet_source_loads_without_n2vpipe(package: Path) -> None:
    """The packaged architecture file imports nothing from n2vpipe: a consumer has only the package."""
    code = ("import importlib.util, sys, zipfile\n"
            "sys.modules['n2vpipe'] = None\n"
            f"open('unet.py', 'wb').write(zipfile.ZipFile({str(package)!r}).read('unet.py'))\n"
            "spec = importlib.util.spec_from_file_location('packaged_unet', 'unet.py')\n"
            "module = importlib.util.module_from_spec(spec); sys.modules['packaged_unet'] = module\n"
            "spec.loader.exec_module(module)\n"
            "net = module.unet_from_architecture(ndim=3, depth=1, base_filters=4, batch_norm=False, "
            "pooling=[[1, 2, 2]])\n"
            "print(type(net).__name__)\n")
    folder = package.parent / "consumer"
    folder.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=folder, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "UNet", result.stderr


def test_a_multichannel_acquisition_is_refused_by_name_and_nothing_is_written(trained: Path, tmp_path: Path) -> None:
    stack = np.stack([poisson_gaussian(smooth_blobs((8, 32, 32), seed=s), seed=s) for s in (2, 3)], axis=1)
    tifffile.imwrite(tmp_path / "two.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    ingest_tiff(tmp_path / "two.tif", tmp_path / "raw.ome.zarr", CHUNKS)
    dst = tmp_path / "model.bioimageio.zip"
    with pytest.raises(InputError, match=r"raw\.ome\.zarr: 2 channels; .*set export\.bioimageio to false"):
        export_bioimageio(tmp_path / "raw.ome.zarr", trained / "model", trained / "comparison.png", dst, "two")
    assert not dst.exists() and not partial_path(dst).exists()


KILLED_EXPORT = """
import sys
from n2vpipe.bioimageio_export import export_bioimageio
export_bioimageio(*sys.argv[1:5], "noisy")
"""


@pytest.fixture
def export_process(trained: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """An export of the trained model running in its own process, staging under ``tmp_path/tmp``."""
    staging = tmp_path / "tmp"
    staging.mkdir()
    dst = tmp_path / "model.bioimageio.zip"
    arguments = [str(p) for p in (trained / "raw.ome.zarr", trained / "model", trained / "comparison.png", dst)]
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, *arguments],
                               env={**os.environ, "TMPDIR": str(staging)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    yield process, staging, dst
    process.kill()
    process.wait()


def test_an_export_killed_while_the_package_is_tested_leaves_no_package(export_process) -> None:
    """Killed once the zip exists in the staging folder (bioimageio.core is testing it): nothing at the
    destination, finished or partial."""
    process, staging, dst = export_process
    deadline = time.monotonic() + 120
    while not list(staging.glob("bioimageio-*/package.zip")) and process.poll() is None:
        assert time.monotonic() < deadline, "the export never staged its package"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not dst.exists() and not partial_path(dst).exists()
