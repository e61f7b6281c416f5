"""A trained model as a bioimage.io model package (model spec 0.5), made and checked with ``bioimageio.spec``.

The package holds the state-dict weights with ``n2vpipe/unet.py`` itself as the architecture
source (one source of truth: the file imports nothing from n2vpipe at load time), a TorchScript
export of the same network, a test input cut from the acquisition with the model's prediction on
it, axes and voxel sizes from the OME-Zarr, the normalisation as pre- and post-processing the
consumer applies, the QC figure as cover, and a README naming the training settings and the limits
of Noise2Void. The package is written only once ``bioimageio.core``'s model test passes on it.
Nothing is fetched from the network: every file the description names is local.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from bioimageio.core import test_model
from bioimageio.spec import ValidationSummary, save_bioimageio_package
from bioimageio.spec.model import v0_5

from n2vpipe import unet
from n2vpipe.errors import InputError
from n2vpipe.io import ImageMeta, atomic_output, open_ome_zarr, read_region
from n2vpipe.model_io import WEIGHTS_FILE, ModelDescription, load_model
from n2vpipe.predict import run_network
from n2vpipe.unet import receptive_reach, total_downsampling

TEST_BLOCK = {"z": 16, "y": 64, "x": 64}
"""Largest test block cut from the acquisition (per spatial axis; smaller volumes give all they have)."""
REPRODUCTION_TOLERANCE = 1e-4
"""How far (a fraction of the test output's range) a consumer's output on the test input may be from it."""
N2V_LIMITS = """\
- Noise2Void removes noise that is independent from pixel to pixel given the signal (shot and read
  noise). Spatially correlated noise (camera fixed-pattern stripes, noise smoothed by deconvolution,
  resampling or lossy compression, scanning artefacts) survives and can be mistaken for structure.
- The model is fitted to this acquisition's noise and intensities: on other samples, microscopes or
  settings its output must be checked against the raw data before use.
- Denoised values are estimates of the expected signal, not measurements: do not use them for
  photon counting or intensity statistics that assume the original noise.
- Within the halo of the image border a consumer pads the input (bioimage.io: symmetric), where n2vpipe
  lets the network pad with zeros as in training: values there differ slightly from n2vpipe's output.
"""
log = logging.getLogger(__name__)
INPUT_ID = v0_5.TensorId("raw")
OUTPUT_ID = v0_5.TensorId("denoised")
N2V_CITATION = ("Krull, Buchholz, Jug: Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019",
                "10.1109/CVPR.2019.00223")
N2V2_CITATION = ("Höck et al.: N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified Sampling "
                 "Strategies and a Tweaked Network Architecture. arXiv 2022", "10.48550/arXiv.2211.08512")


def survives_scale_round_trip(voxels: int, scale: float) -> bool:
    """Whether ``voxels * scale / scale == voxels`` in floating point. bioimageio.spec (0.5.12) checks an
    output's size and halo against the input's with exactly this expression, so 48 voxels (or a halo of 24)
    of 0.1 micrometer fail its validation (24.000000000000004 != 24): sizes and halos are chosen to pass."""
    return voxels * scale / scale == voxels


def exact_halo(reach: Sequence[int], grid: Sequence[int], scales: Sequence[float]) -> tuple[int, ...]:
    """Per axis, the smallest multiple of the pooling grid that covers the receptive ``reach`` and
    :func:`survives_scale_round_trip`."""
    return tuple(next(n for n in itertools.count(-(-r // step) * step, step) if survives_scale_round_trip(n, scale))
                 for r, step, scale in zip(reach, grid, scales, strict=True))


def test_block(meta: ImageMeta, grid: Sequence[int], halo: Sequence[int]) -> tuple[int, ...]:
    """Shape of the central test block: :data:`TEST_BLOCK`, or the smallest input the halo allows
    (``2 * halo + grid``) when that is larger, within the volume; the largest multiple of the pooling
    ``grid`` not above that which :func:`survives_scale_round_trip`."""
    shape = []
    for axis, size, step, margin, scale in zip(meta.spatial_axes, meta.spatial_shape, grid, halo,
                                               meta.spatial_scale, strict=True):
        largest = min(max(TEST_BLOCK[axis], 2 * margin + step), size) // step * step
        extent = next((n for n in range(largest, 0, -step) if survives_scale_round_trip(n, scale)), 0)
        if extent == 0:
            raise InputError(f"the volume is {size} voxels along {axis}, too few for a test block on the network's "
                             f"pooling grid ({step}): set export.bioimageio to false for this acquisition")
        shape.append(extent)
    return tuple(shape)


def package_halo(halo: Sequence[int], block: Sequence[int], grid: Sequence[int],
                 scales: Sequence[float]) -> tuple[int, ...]:
    """The halo a tiling consumer crops per axis: ``halo``, cut down where the test block (then the whole
    volume along that axis) is too small to hold it (bioimage.io's inputs are at least ``2 * halo + grid``)
    to the largest multiple of the grid that fits and :func:`survives_scale_round_trip`; 0 means none."""
    fitted = []
    for margin, extent, step, scale in zip(halo, block, grid, scales, strict=True):
        room = min(margin, (extent - step) // 2 // step * step)
        fitted.append(next((n for n in range(room, 0, -step) if survives_scale_round_trip(n, scale)), 0))
    return tuple(fitted)


def cut_test_input(raw_zarr: Path, meta: ImageMeta, shape: Sequence[int]) -> np.ndarray:
    """The central block of ``shape`` of the first time point and channel, in the raw dtype."""
    array, _ = open_ome_zarr(raw_zarr)
    start = [(n - s) // 2 for n, s in zip(meta.spatial_shape, shape, strict=True)]
    stop = [a + s for a, s in zip(start, shape, strict=True)]
    return read_region(array, meta.key(0, 0, start, stop))


def predict_test_output(model: torch.nn.Module, description: ModelDescription, block: np.ndarray) -> np.ndarray:
    """n2vpipe's prediction on the whole test block (normalise, network, back to the input scale)."""
    normalised = description.normalisation.apply(block, 0)
    out = run_network(model, normalised, total_downsampling(description.spec), torch.device("cpu"))
    return description.normalisation.invert(out, 0)


def _space_unit(unit: str) -> str | None:
    """The OME-Zarr unit if bioimage.io knows it as a space unit, else none (scale stays)."""
    return unit if unit in get_args(v0_5.SpaceUnit) else None


def _input_axes(meta: ImageMeta, grid: Sequence[int], halo: Sequence[int]) -> list[Any]:
    """Batch, one channel, then the spatial axes: multiples of the pooling grid from ``2 * halo + grid`` on,
    with voxel size and unit."""
    axes: list[Any] = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("channel0")])]
    for axis, scale, step, margin in zip(meta.spatial_axes, meta.spatial_scale, grid, halo, strict=True):
        size = v0_5.ParameterizedSize(min=2 * margin + step, step=step)
        axes.append(v0_5.SpaceInputAxis(id=v0_5.AxisId(axis), size=size, scale=scale, unit=_space_unit(meta.unit)))
    return axes


def _output_axes(meta: ImageMeta, halo: Sequence[int]) -> list[Any]:
    """Axes of the output: the input's sizes, with the receptive reach as halo for tiled consumers."""
    axes: list[Any] = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("channel0")])]
    for axis, scale, margin in zip(meta.spatial_axes, meta.spatial_scale, halo, strict=True):
        size = v0_5.SizeReference(tensor_id=INPUT_ID, axis_id=v0_5.AxisId(axis))
        unit = _space_unit(meta.unit)
        if margin:
            axes.append(v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(axis), size=size, halo=margin, scale=scale,
                                                     unit=unit))
        else:
            axes.append(v0_5.SpaceOutputAxis(id=v0_5.AxisId(axis), size=size, scale=scale, unit=unit))
    return axes


def _save_npy(path: Path, array: np.ndarray) -> Path:
    """``array`` with leading batch and channel axes, as ``.npy``."""
    np.save(path, array[None, None])
    return path


def _torchscript(model: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    """The network traced on ``example`` (normalised, with batch and channel axes) and saved as TorchScript.

    Tracing records operations, not sizes, for this all-convolutional network; the package's
    test checks the traced network against the test output."""
    with torch.no_grad():
        traced = torch.jit.trace(model.float().to(memory_format=torch.contiguous_format),
                                 torch.from_numpy(example[None, None].astype(np.float32)), check_trace=False)
    traced.save(str(path))


def documentation(acquisition: str, description: ModelDescription, meta: ImageMeta) -> str:
    """README of the package: what the model is, how it was trained, and what Noise2Void cannot do."""
    settings = json.dumps(description.training, indent=2, sort_keys=True, default=str)
    variant = "N2V2" if description.spec.n2v2 else "Noise2Void"
    return f"""# n2vpipe {variant} denoiser for `{acquisition}`

A {description.spec.ndim}D U-Net trained by n2vpipe with {variant} on the noisy voxels of acquisition
`{acquisition}` itself (no clean data). Axes `{meta.spatial_axes}`, voxel size {list(meta.spatial_scale)} {meta.unit}.

## Use

Input: one channel of raw intensities, any size that is a multiple of the pooling grid
{list(total_downsampling(description.spec))} per spatial axis, from twice the halo plus one grid step on.
The package normalises the input with the training volume's mean {description.normalisation.mean[0]:.6g}
and standard deviation {description.normalisation.std[0]:.6g} and maps the output back to the input's intensity scale.
Tile large volumes with the declared halo (the network's receptive reach rounded to the grid).

## Training settings

```json
{settings}
```

## Limits of Noise2Void

{N2V_LIMITS}
## Validation

The test input is a block cut from `{acquisition}`; the test output is n2vpipe's prediction on it.
n2vpipe exports a package only after `bioimageio.core`'s model test reproduces that output from both
weights formats. Check the QC figure (cover) and the raw data side by side before relying on the model.
"""


def _citations(description: ModelDescription) -> list[v0_5.CiteEntry]:
    """Noise2Void, and N2V2 for that variant."""
    entries = [N2V_CITATION] + ([N2V2_CITATION] if description.spec.n2v2 else [])
    return [v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in entries]


def _bioimageio_config(description: ModelDescription, test_output: np.ndarray) -> v0_5.BioimageioConfig:
    """Reproduction tolerance (:data:`REPRODUCTION_TOLERANCE` of the test output's range, every voxel), the
    training details and the limits of Noise2Void."""
    value_range = float(np.ptp(test_output)) or float(np.abs(test_output).max()) or 1.0
    tolerance = v0_5.ReproducibilityTolerance(absolute_tolerance=REPRODUCTION_TOLERANCE * value_range,
                                              relative_tolerance=0.0, mismatched_elements_per_million=0)
    training = description.training
    details = v0_5.TrainingDetails(training_batch_size=training.get("batch_size"),
                                   initial_learning_rate=training.get("learning_rate"),
                                   learning_rate_schedule=training.get("lr_schedule"),
                                   loss_function=f"masked {training.get('loss', 'mse')} loss (Noise2Void blind spots)")
    return v0_5.BioimageioConfig(reproducibility_tolerance=[tolerance], architecture_type="U-Net", training=details,
                                 bias_risks_limitations=v0_5.BiasRisksLimitations(limitations=N2V_LIMITS))


def build_description(acquisition: str, description: ModelDescription, meta: ImageMeta, files: Mapping[str, Path],
                      halo: Sequence[int]) -> v0_5.ModelDescr:
    """The bioimage.io model description over the staged ``files`` (weights, torchscript, architecture,
    test_input, test_output, cover, documentation)."""
    grid = total_downsampling(description.spec)
    mean, std = float(description.normalisation.mean[0]), float(description.normalisation.std[0])
    preprocessing = [v0_5.FixedZeroMeanUnitVarianceDescr(kwargs=v0_5.FixedZeroMeanUnitVarianceKwargs(mean=mean,
                                                                                                     std=std))]
    postprocessing = [v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=std, offset=mean))]
    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    architecture = v0_5.ArchitectureFromFileDescr(source=files["architecture"],
                                                  callable=v0_5.Identifier("unet_from_architecture"),
                                                  kwargs=description.spec.to_dict())
    return v0_5.ModelDescr(
        name=f"n2vpipe denoiser {acquisition}",
        description=f"Noise2Void denoising model trained by n2vpipe on acquisition {acquisition}",
        authors=[v0_5.Author(name="n2vpipe")],
        cite=_citations(description),
        license=v0_5.LicenseId("MIT"),
        documentation=v0_5.FileDescr(source=files["documentation"]),
        covers=[v0_5.FileDescr(source=files["cover"])],
        tags=["denoising", "noise2void", "n2vpipe", f"{description.spec.ndim}d", "fluorescence-light-microscopy"],
        inputs=[v0_5.InputTensorDescr(id=INPUT_ID, axes=_input_axes(meta, grid, halo),
                                      test_tensor=v0_5.FileDescr(source=files["test_input"]),
                                      data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                                      preprocessing=preprocessing)],
        outputs=[v0_5.OutputTensorDescr(id=OUTPUT_ID, axes=_output_axes(meta, halo),
                                        test_tensor=v0_5.FileDescr(source=files["test_output"]),
                                        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                                        postprocessing=postprocessing)],
        weights=v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(source=files["weights"], architecture=architecture,
                                                                 pytorch_version=torch_version),
            torchscript=v0_5.TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=torch_version,
                                                     parent="pytorch_state_dict"),
        ),
        config=v0_5.Config(bioimageio=_bioimageio_config(description, np.load(files["test_output"])),
                           n2vpipe={"model": json.loads(json.dumps(description.to_dict(), default=str))}),
    )


def stage_files(raw_zarr: Path, model_dir: Path, cover: Path, staging: Path, acquisition: str,
                ) -> tuple[dict[str, Path], ModelDescription, ImageMeta, tuple[int, ...]]:
    """Write every file of the package into ``staging``; return them by role, with the model and image facts
    and the package's halo."""
    model, description = load_model(model_dir)
    _, meta = open_ome_zarr(raw_zarr)
    if meta.size("c") != 1 or description.spec.in_channels != 1:
        raise InputError(f"{raw_zarr}: {meta.size('c')} channels; bioimage.io export covers single-channel "
                         "acquisitions only: set export.bioimageio to false for this acquisition")
    model = model.to(memory_format=torch.contiguous_format)
    grid = total_downsampling(description.spec)
    halo = exact_halo(receptive_reach(description.spec), grid, meta.spatial_scale)
    shape = test_block(meta, grid, halo)
    test_input = cut_test_input(raw_zarr, meta, shape).astype(np.float32)
    files = {
        "weights": staging / WEIGHTS_FILE,
        "architecture": staging / Path(unet.__file__).name,
        "torchscript": staging / "weights.torchscript.pt",
        "test_input": _save_npy(staging / "test_input.npy", test_input),
        "test_output": _save_npy(staging / "test_output.npy", predict_test_output(model, description, test_input)),
        "cover": staging / "cover.png",
        "documentation": staging / "README.md",
    }
    _torchscript(model, description.normalisation.apply(test_input, 0), files["torchscript"])
    shutil.copyfile(model_dir / WEIGHTS_FILE, files["weights"])
    shutil.copyfile(unet.__file__, files["architecture"])
    shutil.copyfile(cover, files["cover"])
    files["documentation"].write_text(documentation(acquisition, description, meta))
    return files, description, meta, package_halo(halo, shape, grid, meta.spatial_scale)


def export_bioimageio(raw_zarr: Path, model_dir: Path, cover: Path, dst: Path, acquisition: str) -> v0_5.ModelDescr:
    """Write the bioimage.io package of ``model_dir`` (trained on ``raw_zarr``) to ``dst`` atomically.

    An invalid description (pydantic's ``ValueError``) or a failed model test (:func:`check_package`) raises
    before anything is written to ``dst``; the log names the package, its size and the test result."""
    with tempfile.TemporaryDirectory(prefix="bioimageio-") as folder:
        files, description, meta, halo = stage_files(Path(raw_zarr), Path(model_dir), Path(cover), Path(folder),
                                                     acquisition)
        model_descr = build_description(acquisition, description, meta, files, halo)
        package = save_bioimageio_package(model_descr, output_path=Path(folder) / "package.zip")
        summary = check_package(package, Path(dst))
        with atomic_output(Path(dst)) as partial:
            shutil.copyfile(package, partial)
    log.info("wrote %s (%d bytes, halo %s): bioimageio.core model test passed (%d checks)", dst,
             Path(dst).stat().st_size, list(halo), len(summary.details))
    return model_descr


def check_package(package: Path, named: Path | None = None) -> ValidationSummary:
    """Run ``bioimageio.core``'s model test on ``package`` (the model on the test input against the
    test output, for every weights format); a failed test raises ``ValueError`` naming the package
    (as ``named``) and the failed checks."""
    summary = test_model(package)
    if summary.status != "passed":
        failed = "; ".join(f"{detail.name}: {' '.join(str(e.msg) for e in detail.errors)[:300]}"
                           for detail in summary.details if detail.status == "failed")
        raise ValueError(f"{named or package}: the bioimage.io package fails bioimageio.core's model test "
                         f"({failed}); it was not written: report this as an n2vpipe bug")
    return summary
