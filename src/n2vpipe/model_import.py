"""A model from elsewhere for an acquisition: another acquisition's ``model/`` folder or an n2vpipe-exported
bioimage.io package, checked against the acquisition and copied into an n2vpipe model folder.

:func:`read_model` is the one way a model folder or package is read for use elsewhere (warm starts too).
The copy is what inference reads, so a later change of the source cannot change a finished result
unnoticed. A model whose dimensionality, axes or channel count do not fit the acquisition fails with one
sentence naming both sides.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch
import yaml

from n2vpipe.errors import InputError
from n2vpipe.io import ImageMeta, atomic_output, open_ome_zarr, write_bytes_atomic, write_json
from n2vpipe.model_io import DESCRIPTION_FILE, WEIGHTS_FILE, ModelDescription, load_description, load_model
from n2vpipe.unet import UNet

PACKAGE_DESCRIPTION = "rdf.yaml"


def description_from_package(package: Path) -> tuple[dict, bytes]:
    """The n2vpipe ``model.json`` content and the state-dict bytes inside an n2vpipe-exported package.

    A package that is no zip, has no description, or was not made by n2vpipe (no ``config.n2vpipe.model``)
    raises :class:`InputError` naming it."""
    try:
        with zipfile.ZipFile(package) as archive:
            rdf = yaml.safe_load(archive.read(PACKAGE_DESCRIPTION))
            model = (rdf.get("config") or {}).get("n2vpipe", {}).get("model")
            if model is None:
                raise InputError(f"{package}: a bioimage.io package not exported by n2vpipe (no config.n2vpipe); "
                                 "only n2vpipe packages and model folders can be used as model: for now")
            weights = archive.read(rdf["weights"]["pytorch_state_dict"]["source"])
    except (zipfile.BadZipFile, KeyError, yaml.YAMLError, AttributeError, TypeError) as error:
        raise InputError(f"{package}: not a readable bioimage.io model package ({error!r}); give a model/ folder "
                         "or a model.bioimageio.zip written by n2vpipe") from error
    return model, weights


def read_model_source(source: Path, setting: str = "model:") -> tuple[dict, bytes]:
    """The ``model.json`` content and the state-dict bytes of a model folder (whose weights are checked to load)
    or of an n2vpipe package; a missing path raises :class:`InputError` naming it and ``setting``."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such model folder or package (setting {setting}); give the model/ folder "
                         "of another acquisition or a model.bioimageio.zip written by n2vpipe")
    if source.is_dir():
        load_model(source)
        return json.loads((source / DESCRIPTION_FILE).read_text()), (source / WEIGHTS_FILE).read_bytes()
    return description_from_package(source)


def read_model(source: Path, setting: str = "model:") -> tuple[ModelDescription, dict[str, torch.Tensor]]:
    """The description and the weights (tensors only, on the CPU) of a model folder or an n2vpipe package;
    weights that do not fit the description raise :class:`InputError` naming ``source``."""
    description_json, weights = read_model_source(source, setting)
    try:
        description = ModelDescription.from_dict(description_json)
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        UNet(description.spec).load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise InputError(f"{source}: the model cannot be read ({str(error).splitlines()[0] or error!r}); give "
                         "the model/ folder of another acquisition or a model.bioimageio.zip written by n2vpipe"
                         ) from error
    return description, state


def check_fits(description: ModelDescription, source: Path, meta: ImageMeta, raw_zarr: Path) -> None:
    """Raise :class:`InputError` naming the model and the acquisition when the model's spatial axes or
    channel count do not fit the acquisition's."""
    if description.spatial_axes != meta.spatial_axes:
        raise InputError(f"{source}: the model is {description.spec.ndim}D for axes {description.spatial_axes}, but "
                         f"{raw_zarr} has axes {meta.spatial_axes}: use a model trained on a "
                         f"{len(meta.spatial_axes)}D acquisition, or train one (remove model:)")
    channels = len(description.normalisation.mean)
    if channels != meta.size("c"):
        raise InputError(f"{source}: the model was trained on {channels} channel(s), but {raw_zarr} has "
                         f"{meta.size('c')}: use a model trained with as many channels, or train one (remove model:)")


def import_model(source: Path, raw_zarr: Path, dst: Path) -> ModelDescription:
    """Copy the model at ``source`` (a model folder or an n2vpipe ``.zip`` package) to the folder ``dst``, after
    checking that it fits the acquisition in ``raw_zarr`` and that its weights load; ``dst`` appears atomically."""
    source, dst = Path(source), Path(dst)
    description_json, weights = read_model_source(source)
    _, meta = open_ome_zarr(raw_zarr)
    with atomic_output(dst) as partial:
        partial.mkdir()
        write_json(partial / DESCRIPTION_FILE, {**description_json, "imported_from": str(source)})
        write_bytes_atomic(partial / WEIGHTS_FILE, weights)
        description = load_description(partial)
        check_fits(description, source, meta, Path(raw_zarr))
        load_model(partial)
    return description
