"""A trained model on disk: ``weights.pt`` (tensors only) beside a self-describing ``model.json``.

Weights load with ``torch.load(weights_only=True)``: no pickled code runs. A model folder
that cannot be read fails with one sentence naming the file and how to retrain.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from n2vpipe import __version__
from n2vpipe.errors import InputError
from n2vpipe.io import write_bytes_atomic, write_json
from n2vpipe.unet import UNet, UNetSpec, memory_format, receptive_field, total_downsampling

WEIGHTS_FILE = "weights.pt"
DESCRIPTION_FILE = "model.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and standard deviation used to normalise inputs."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, data: np.ndarray, channel: int) -> np.ndarray:
        """Normalise ``data`` of one channel to float32."""
        return ((data.astype(np.float32) - self.mean[channel]) / self.std[channel]).astype(np.float32)

    def invert(self, data: np.ndarray, channel: int) -> np.ndarray:
        """Map network output of one channel back to the input's intensity scale."""
        return (data * self.std[channel] + self.mean[channel]).astype(np.float32)


@dataclass(frozen=True)
class ModelDescription:
    """What a model is and how it was trained; written as ``model.json``."""

    spec: UNetSpec
    normalisation: Normalisation
    spatial_axes: str
    training: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, with derived facts (receptive field, grid) for readers."""
        return {
            "format_version": FORMAT_VERSION,
            "n2vpipe_version": __version__,
            "torch_version": torch.__version__,
            "architecture": {"name": "unet", **self.spec.to_dict()},
            "receptive_field": list(receptive_field(self.spec)),
            "block_grid": list(total_downsampling(self.spec)),
            "spatial_axes": self.spatial_axes,
            "normalisation": {"mean": list(self.normalisation.mean), "std": list(self.normalisation.std)},
            "training": self.training,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelDescription:
        """Inverse of :meth:`to_dict`."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported model format {data.get('format_version')!r}")
        architecture = {k: v for k, v in data["architecture"].items() if k != "name"}
        norm = data["normalisation"]
        return cls(
            spec=UNetSpec.from_dict(architecture),
            normalisation=Normalisation(tuple(norm["mean"]), tuple(norm["std"])),
            spatial_axes=data["spatial_axes"],
            training=data.get("training", {}),
            history=data.get("history", {}),
        )


def save_model(model: UNet, description: ModelDescription, directory: Path) -> None:
    """Write weights and description into ``directory``, each atomically (a full disk raises
    :class:`~n2vpipe.errors.DiskFullError` naming the file and leaves no partial file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    write_bytes_atomic(directory / WEIGHTS_FILE, buffer.getvalue())
    write_json(directory / DESCRIPTION_FILE, description.to_dict())


def unreadable_model(path: Path, directory: Path, problem: str) -> InputError:
    """The error for a model file that cannot be used: names it and says how to retrain."""
    return InputError(f"{path}: {problem}; the model is damaged: delete {directory} and rerun the workflow "
                      "to train it again")


def load_description(directory: Path) -> ModelDescription:
    """The :class:`ModelDescription` in ``directory``'s ``model.json``; a missing, garbled or
    incomplete file raises :class:`~n2vpipe.errors.InputError` naming it."""
    path = Path(directory) / DESCRIPTION_FILE
    try:
        return ModelDescription.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as error:
        raise unreadable_model(path, directory, "the model description is missing") from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise unreadable_model(path, directory, f"the model description cannot be read ({error!r})") from error


def load_model(directory: Path, device: str | torch.device = "cpu") -> tuple[UNet, ModelDescription]:
    """Rebuild the network from ``directory`` in eval mode, loading tensors only.

    A missing or damaged ``model.json`` or ``weights.pt`` (truncated, not a torch file,
    other tensors) raises :class:`~n2vpipe.errors.InputError` naming the file."""
    directory = Path(directory)
    description = load_description(directory)
    model = UNet(description.spec)
    path = directory / WEIGHTS_FILE
    try:
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    except FileNotFoundError as error:
        raise unreadable_model(path, directory, "the weights file is missing") from error
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise unreadable_model(path, directory, f"the weights cannot be loaded ({problem})") from error
    return model.to(device, memory_format=memory_format(description.spec.ndim)).eval(), description

