"""Noise2Void training on patches streamed from an OME-Zarr volume.

Patches come from a bounded pool of chunk-aligned tiles read from the zarr, so
memory is fixed by the config, not by the volume. Validation uses a spatially
disjoint slab at the end of the longest axis: every pixel of a fixed set of
patches cut from it is scored once per validation, under a fixed set of masks
(:func:`validation_masks`). With ``ema_decay`` above 0, an exponential moving
average of the weights (:class:`WeightAverage`) is what validation scores and
what is saved. The weights with the lowest validation loss are the ones saved,
and training can stop early once it stops improving. A checkpoint (weights, their
average, best weights, optimizer, every RNG state, the tiles in the patch pool,
step) is written every ``checkpoint_every`` steps and when SIGTERM arrives (a
scheduler's time limit); a run started again on the same partial model folder
resumes from it and ends with the weights an uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import itertools
import logging
import math
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import zarr
from tqdm import tqdm

from n2vpipe.config_section import Bound, ConfigSection
from n2vpipe.device import arithmetic_name, autocast_dtype, select_device, to_device
from n2vpipe.discover import RUN_ONLY
from n2vpipe.errors import InputError, reporting_disk_full
from n2vpipe.io import (
    ImageMeta,
    atomic_output,
    configure_zarr,
    open_ome_zarr,
    read_region,
    sample_voxels,
    write_bytes_atomic,
)
from n2vpipe.masking import apply_blind_spots, mask_batch, struct_offsets
from n2vpipe.model_import import read_model
from n2vpipe.model_io import ModelDescription, Normalisation, save_model
from n2vpipe.qc import plot_training_log
from n2vpipe.unet import UNet, UNetSpec, anisotropic_pooling, memory_format, total_downsampling

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "training_log.csv"
LOG_COLUMNS = ("step", "train_loss", "val_loss", "learning_rate", "elapsed_s")
CHECKPOINT_FORMAT = 3
RUN_ONLY_SETTINGS = RUN_ONLY["train"]
"""Training settings a checkpoint written under other values of is resumed all the same."""
# Signals after which training checkpoints at the end of its current step and exits (SLURM's time limit).
STOP_SIGNALS = (signal.SIGTERM,)


TRAIN_CHOICES: dict[str, tuple[str, ...]] = {
    "variant": ("n2v", "n2v2"),
    "loss": ("mse", "l1"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "float32", "bfloat16", "float16"),
    "lr_schedule": ("cosine", "constant"),
}
"""The values each choice setting takes, as ``config/schema.yaml`` lists them."""
TRAIN_LIMITS: dict[str, Bound] = {
    **{name: (1, True, None) for name in ("batch_size", "steps", "neighbour_radius", "base_filters",
                                          "validation_patches", "validate_every", "checkpoint_every", "pool_tiles",
                                          "tile_refresh_every")},
    **{name: (0, True, None) for name in ("seed", "max_minutes", "early_stopping_patience",
                                          "early_stopping_min_delta")},
    "depth": (1, True, 5),
    "learning_rate": (0, False, None),
    "masked_fraction": (0, False, 0.5),
    "validation_fraction": (0, True, 0.5),
    "ema_decay": (0, True, 0.9999),
}
"""The bounds of each numeric training setting, as ``config/schema.yaml`` sets them."""


@dataclass(frozen=True)
class TrainConfig(ConfigSection):
    """Training settings; built from the ``train`` section of the workflow config."""

    title: ClassVar[str] = "training"
    choices: ClassVar[Mapping[str, tuple[str, ...]]] = TRAIN_CHOICES
    bounds: ClassVar[Mapping[str, Bound]] = TRAIN_LIMITS

    variant: Literal["n2v", "n2v2"] = "n2v"
    patch: Mapping[str, int] = field(default_factory=lambda: {"z": 16, "y": 64, "x": 64})
    batch_size: int = 8
    steps: int = 2000
    learning_rate: float = 4e-4
    masked_fraction: float = 0.002
    neighbour_radius: int = 2
    loss: Literal["mse", "l1"] = "mse"
    depth: int = 2
    base_filters: int = 32
    batch_norm: bool = False
    pooling: str | list[list[int]] = "auto"
    seed: int = 0
    validation_fraction: float = 0.1
    validation_patches: int = 8
    validate_every: int = 50
    max_minutes: float = 0.0
    checkpoint_every: int = 100
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    pool_tiles: int = 8
    tile_refresh_every: int = 4
    struct_mask: list[list[int]] | list[list[list[int]]] | None = None
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    ema_decay: float = 0.0
    init_from: str = ""

    def __post_init__(self) -> None:
        """Reject values outside what ``config/schema.yaml`` allows, so that a library caller meets the
        same limits as a workflow config."""
        self.refuse(self.out_of_range() + [f"patch.{axis} must be >= 1, not {size!r}"
                                           for axis, size in self.patch.items() if size < 1])


@dataclass(frozen=True)
class Region:
    """A box of spatial coordinates ``[start, stop)`` per axis."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Extent per axis."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))


def effective_patch(meta: ImageMeta, config: TrainConfig, grid: tuple[int, ...], source: Path) -> tuple[int, ...]:
    """Configured patch per spatial axis, shrunk to fit the volume and rounded down to the pooling grid.

    Raises :class:`~n2vpipe.errors.InputError` naming ``source`` when the volume is smaller than
    the grid along an axis."""
    patch = []
    for axis, size, step in zip(meta.spatial_axes, meta.spatial_shape, grid, strict=True):
        wanted = min(int(config.patch[axis]), size)
        rounded = (wanted // step) * step
        if rounded < step:
            raise InputError(f"{source}: the image is {size} voxels along {axis}, smaller than the {step} the "
                             f"network pools it to (train.depth {config.depth}, pooling {config.pooling!r}); give "
                             "this acquisition a smaller train.depth, or train.pooling factors of 1 along "
                             f"{axis} (acquisitions: {{NAME: {{train: ...}}}}), or leave it out")
        patch.append(rounded)
    return tuple(patch)


def split_regions(shape: tuple[int, ...], patch: tuple[int, ...], fraction: float,
                  grid: tuple[int, ...]) -> tuple[Region, Region | None]:
    """Split the volume into disjoint training and validation regions.

    The validation slab takes ``fraction`` of the axis with the most room, but at
    least half a patch, rounded up to the pooling ``grid``; ``None`` when the rest
    could not hold a training patch. Small volumes so keep most of their data for
    training (:func:`validation_patch` fits the patches to the slab).
    """
    whole = Region((0,) * len(shape), tuple(shape))
    if fraction <= 0:
        return whole, None
    room = [s / p for s, p in zip(shape, patch, strict=True)]
    axis = int(np.argmax(room))
    depth = math.ceil(max(shape[axis] * fraction, patch[axis] / 2) / grid[axis]) * grid[axis]
    if shape[axis] - depth < patch[axis]:
        return whole, None
    cut = shape[axis] - depth
    train_stop = list(shape)
    train_stop[axis] = cut
    val_start = [0] * len(shape)
    val_start[axis] = cut
    return Region(whole.start, tuple(train_stop)), Region(tuple(val_start), tuple(shape))


def validation_patch(patch: tuple[int, ...], region: Region) -> tuple[int, ...]:
    """The training patch, cut down to the validation slab where it is thinner."""
    return tuple(min(p, r) for p, r in zip(patch, region.shape, strict=True))


def estimate_normalisation(array: zarr.Array, meta: ImageMeta, rng: np.random.Generator,
                           max_chunks: int = 64, samples_per_chunk: int = 4096) -> Normalisation:
    """Per-channel mean and std from voxels sampled over the whole volume.

    Up to ``max_chunks`` random chunks per channel are read; values beyond the
    0.01st / 99.99th percentiles (hot pixels, saturated spots) are left out.
    """
    means, stds = [], []
    for channel in range(meta.size("c")):
        sample = sample_voxels(array, meta, channel, rng, max_chunks, samples_per_chunk)
        low, high = np.percentile(sample, [0.01, 99.99])
        kept = sample[(sample >= low) & (sample <= high)]
        means.append(float(kept.mean()))
        stds.append(float(max(kept.std(), 1e-6)))
    return Normalisation(tuple(means), tuple(stds))


TileSource = tuple[int, int, tuple[int, ...]]
"""Where a pool tile comes from: time point, channel and spatial origin."""


class PatchPool:
    """A bounded pool of chunk-aligned tiles from which random patches are cut.

    Memory is ``pool_tiles`` tiles of about twice the patch size, whatever the
    volume size; one tile is replaced every ``refresh_every`` batches. Its
    checkpoint form (:meth:`state_dict`) holds where the tiles come from, not their data.
    """

    def __init__(self, array: zarr.Array, meta: ImageMeta, region: Region, patch: tuple[int, ...],
                 normalisation: Normalisation, pool_tiles: int, refresh_every: int,
                 rng: np.random.Generator) -> None:
        self.array, self.meta, self.region, self.patch = array, meta, region, patch
        self.normalisation, self.refresh_every, self.rng = normalisation, refresh_every, rng
        chunks = meta.spatial_chunks(array.chunks)
        self.chunks = chunks
        self.tile_shape = tuple(
            min(r, max(p, math.ceil(2 * p / c) * c)) for r, p, c in zip(region.shape, patch, chunks, strict=True)
        )
        self.sources = [self._random_source() for _ in range(pool_tiles)]
        self.tiles = [self._read_tile(source) for source in self.sources]
        self.batches_served = 0

    def _random_source(self) -> TileSource:
        """A random time point, channel and chunk-aligned origin inside the region."""
        origin = []
        for start, stop, size, chunk in zip(self.region.start, self.region.stop, self.tile_shape, self.chunks,
                                            strict=True):
            latest = stop - size
            aligned = list(range(start + (-start) % chunk, latest + 1, chunk)) or [latest]
            origin.append(int(self.rng.choice(aligned)))
        t = int(self.rng.integers(self.meta.size("t")))
        channel = int(self.rng.integers(self.meta.size("c")))
        return t, channel, tuple(origin)

    def _read_tile(self, source: TileSource) -> np.ndarray:
        """The normalised tile at ``source``; an undecodable chunk names the store, array and chunk key."""
        t, channel, origin = source
        stop = tuple(o + s for o, s in zip(origin, self.tile_shape, strict=True))
        return self.normalisation.apply(read_region(self.array, self.meta.key(t, channel, origin, stop)), channel)

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint form: where each tile comes from and how many batches were served."""
        return {"sources": [[t, channel, list(origin)] for t, channel, origin in self.sources],
                "batches_served": self.batches_served}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`: the tiles are read again from the volume."""
        self.sources = [(int(t), int(channel), tuple(origin)) for t, channel, origin in state["sources"]]
        self.tiles = [self._read_tile(source) for source in self.sources]
        self.batches_served = int(state["batches_served"])

    def sample(self, count: int) -> np.ndarray:
        """Cut ``count`` random patches from the pool, refreshing one tile now and then."""
        self.batches_served += 1
        if self.batches_served % self.refresh_every == 0:
            replaced = int(self.rng.integers(len(self.tiles)))
            self.sources[replaced] = self._random_source()
            self.tiles[replaced] = self._read_tile(self.sources[replaced])
        patches = np.empty((count, *self.patch), dtype=np.float32)
        for i in range(count):
            tile = self.tiles[int(self.rng.integers(len(self.tiles)))]
            corner = [int(self.rng.integers(0, s - p + 1)) for s, p in zip(tile.shape, self.patch, strict=True)]
            patches[i] = tile[tuple(slice(c, c + p) for c, p in zip(corner, self.patch, strict=True))]
        return patches


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips along Y and X and 90° rotations in the YX plane (only when Y == X); never through Z."""
    out = np.empty_like(batch)
    square = batch.shape[-1] == batch.shape[-2]
    for i, patch in enumerate(batch):
        if square:
            patch = np.rot90(patch, k=int(rng.integers(4)), axes=(-2, -1))
        if rng.random() < 0.5:
            patch = patch[..., ::-1]
        if rng.random() < 0.5:
            patch = patch[..., ::-1, :]
        out[i] = patch
    return out


def masked_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared (or absolute) error over the masked pixels only."""
    error = prediction - target
    per_pixel = error.abs() if kind == "l1" else error.square()
    return (per_pixel * mask).sum() / mask.sum().clamp(min=1)


def build_spec(config: TrainConfig, meta: ImageMeta) -> UNetSpec:
    """Network for this volume: 2D for YX images, 3D otherwise; pooling from the voxel size when ``auto``;
    the N2V2 network (max-blur-pooling, no top skip) for ``variant: n2v2``."""
    ndim = len(meta.spatial_axes)
    if config.pooling == "auto":
        pooling = anisotropic_pooling(config.depth, meta.spatial_scale)
    else:
        pooling = tuple(tuple(level) for level in config.pooling)
    return UNetSpec(ndim=ndim, depth=config.depth, base_filters=config.base_filters,
                    batch_norm=config.batch_norm, pooling=pooling, n2v2=config.variant == "n2v2")


WARM_START_MATCH: tuple[tuple[str, str], ...] = (
    ("ndim", "dimensionality (spatial axes)"), ("depth", "train.depth"), ("base_filters", "train.base_filters"),
    ("batch_norm", "train.batch_norm"), ("n2v2", "train.variant (n2v2)"),
)
"""The network settings (:class:`~n2vpipe.unet.UNetSpec` field, the setting it comes from) a warm start's
model must share with the network being trained; pooling may differ (it holds no weights)."""


@dataclass(frozen=True)
class WarmStart:
    """The weights training starts from (``train.init_from``) and, as ``record``, where they came from."""

    weights: dict[str, torch.Tensor]
    record: dict[str, Any]


def weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of ``weights``, in name order: which weights a run started from."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def warm_start(source: Path, spec: UNetSpec, meta: ImageMeta, zarr_path: Path) -> WarmStart:
    """The weights of the model folder or n2vpipe package ``source``, checked to fit the network ``spec`` and the
    channels of the acquisition at ``zarr_path``; a mismatch raises :class:`InputError` naming both sides and the
    setting. The model's normalisation is not taken: training normalises with the acquisition's own."""
    description, weights = read_model(source, "train.init_from")
    for name, setting in WARM_START_MATCH:
        theirs, ours = getattr(description.spec, name), getattr(spec, name)
        if theirs != ours:
            raise InputError(f"{source}: the model to start from has {name} {theirs}, but training on {zarr_path} "
                             f"builds a network with {name} {ours} ({setting}): make them equal for this "
                             "acquisition, or remove train.init_from")
    channels = len(description.normalisation.mean)
    if channels != meta.size("c"):
        raise InputError(f"{source}: the model to start from was trained on {channels} channel(s), but {zarr_path} "
                         f"has {meta.size('c')}: start from a model with as many channels, or remove train.init_from")
    return WarmStart(weights, {"source": str(source), "weights_sha256": weights_digest(weights),
                               "trained_on": description.training.get("source")})


def budget_progress(config: TrainConfig, step: int, elapsed_s: float) -> float:
    """How far training is through its budget (0 to 1): the further along of ``steps`` and ``max_minutes``."""
    fractions = [step / config.steps]
    if config.max_minutes > 0:
        fractions.append(elapsed_s / (config.max_minutes * 60))
    return min(1.0, max(fractions))


def learning_rate_at(config: TrainConfig, progress: float) -> float:
    """Cosine decay from ``learning_rate`` to 5 % of it over the budget, or a constant learning rate.

    Following the budget rather than the step count alone, a run that the wall-time
    budget ends has annealed by then, so the weights it finishes with are settled.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    if config.lr_schedule == "cosine":
        floor = config.learning_rate * 0.05
        return floor + (config.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {config.lr_schedule!r}")


@dataclass
class BestValidation:
    """The lowest validation loss so far, its step and a copy of its weights, for early stopping.

    ``stale`` counts the validations since the loss last fell more than
    ``min_delta`` below the best before it.
    """

    min_delta: float
    step: int | None = None
    loss: float = math.inf
    weights: dict[str, torch.Tensor] | None = None
    stale: int = 0

    def record(self, step: int, loss: float, model: UNet) -> None:
        """Take one validation loss (NaN counts as no improvement); copy the weights when it is the lowest."""
        self.stale = 0 if loss < self.loss - self.min_delta else self.stale + 1
        if loss < self.loss:
            self.step, self.loss = step, loss
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint form: tensors and plain values only."""
        return {"step": self.step, "loss": self.loss, "weights": self.weights, "stale": self.stale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.step, self.loss, self.stale = state["step"], state["loss"], state["stale"]
        self.weights = state["weights"]


VALIDATION_DRAWS = 8
"""The fewest masks each validation patch is scored under; together they cover each of its pixels once."""


def validation_masks(shape: tuple[int, ...], draws: int = VALIDATION_DRAWS) -> np.ndarray:
    """Boolean masks of shape ``(n, *shape)`` that partition the pixels of ``shape``: each pixel is in exactly one.

    Mask ``k`` holds the pixels whose coordinates, modulo the lattice side ``s``
    (the smallest with ``s**ndim >= draws``), equal the ``k``-th offset; so no two
    pixels of one mask are closer than ``s`` along any axis, and each mask holds
    about ``1 / s**ndim`` of the pixels. Offsets that select no pixel (an axis
    shorter than ``s``) are left out.
    """
    side = 1
    while side ** len(shape) < draws:
        side += 1
    remainders = np.indices(shape) % side
    masks = [np.all(remainders == np.reshape(offset, (-1,) + (1,) * len(shape)), axis=0)
             for offset in itertools.product(range(side), repeat=len(shape))]
    return np.stack([mask for mask in masks if mask.any()])


@dataclass(frozen=True)
class ValidationSet:
    """Fixed validation patches, each under every mask of :func:`validation_masks`: per mask, the network
    input ``(B, 1, *spatial)`` and its loss mask; the target is the patches themselves."""

    inputs: tuple[torch.Tensor, ...]
    masks: tuple[torch.Tensor, ...]
    targets: torch.Tensor

    @classmethod
    def build(cls, patches: np.ndarray, config: TrainConfig, rng: np.random.Generator,
              device: torch.device) -> ValidationSet:
        """Mask ``patches`` (shape ``(B, *spatial)``) under each validation mask, replacements drawn from ``rng``."""
        replacement = "median" if config.variant == "n2v2" else "uniform"
        struct = None if config.struct_mask is None else struct_offsets(config.struct_mask, patches.ndim - 1)
        layout = memory_format(patches.ndim - 1)
        inputs, masks = [], []
        for mask in validation_masks(patches.shape[1:]):
            masked = np.stack([apply_blind_spots(patch, mask, config.neighbour_radius, replacement, rng, struct)
                               for patch in patches])
            inputs.append(to_device(masked[:, None], device, layout))
            masks.append(to_device(np.broadcast_to(mask, patches.shape)[:, None].astype(np.float32), device, layout))
        return cls(tuple(inputs), tuple(masks), to_device(patches[:, None], device, layout))

    def loss(self, model: UNet, kind: str) -> float:
        """Loss of ``model`` (in eval mode) over every pixel of the patches, each scored once, blind."""
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.targets.device)
        with torch.no_grad():
            for inputs, mask in zip(self.inputs, self.masks, strict=True):
                error = model(inputs) - self.targets
                per_pixel = error.abs() if kind == "l1" else error.square()
                total += (per_pixel * mask).sum(dtype=torch.float64)
        return float(total) / self.targets.numel()


class WeightAverage:
    """An exponential moving average of a model's weights, held in a copy of the model (eval mode).

    After step ``t`` the average moves towards the weights by ``1 - d``, with
    ``d = min(decay, (1 + t) / (10 + t))``: the warm-up keeps a short run's average
    from clinging to the initial weights. Decay 0 copies the weights. Buffers
    (BatchNorm's running statistics) are copied, not averaged.
    """

    def __init__(self, model: UNet, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def update(self, model: UNet, step: int) -> None:
        """Move the average towards ``model``'s weights after optimiser step ``step`` (1 for the first)."""
        rate = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
                if rate == 0:
                    average.copy_(current)
                else:
                    average.lerp_(current, 1 - rate)
            for average, current in zip(self.model.buffers(), model.buffers(), strict=True):
                average.copy_(current)


def _masked_tensors(batch: np.ndarray, config: TrainConfig, rng: np.random.Generator,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network input, target and mask tensors of shape ``(B, 1, *spatial)``."""
    replacement = "median" if config.variant == "n2v2" else "uniform"
    inputs, masks = mask_batch(batch, config.masked_fraction, config.neighbour_radius, replacement, rng,
                               struct_mask=config.struct_mask)
    layout = memory_format(batch.ndim - 1)
    return tuple(to_device(a[:, None], device, layout) for a in (inputs, batch, masks.astype(np.float32)))


@dataclass
class TrainingState:
    """What a checkpoint holds besides the step counters: everything a resumed run needs to take the
    steps an uninterrupted run would have taken (the validation set comes from the seed alone)."""

    model: UNet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    rng: np.random.Generator
    pool: PatchPool
    best: BestValidation
    average: WeightAverage
    warm_start: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint form: tensors and plain values only."""
        state = {
            "warm_start": self.warm_start,
            "model": self.model.state_dict(),
            "average": self.average.model.state_dict(),
            "best": self.best.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "pool": self.pool.state_dict(),
        }
        if torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.average.model.load_state_dict(state["average"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["grad_scaler"]:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.best.load_state_dict(state["best"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())  # RNG states are CPU tensors, wherever the checkpoint loads
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([device_state.cpu() for device_state in state["cuda_rng"]])
        self.pool.load_state_dict(state["pool"])


@dataclass(frozen=True)
class LoopPosition:
    """Where the optimisation loop stands: steps done, seconds spent, and the training loss summed
    since the last log row (so the rows after a resume are those of an uninterrupted run)."""

    step: int = 0
    elapsed_s: float = 0.0
    running_loss: float = 0.0
    running_count: int = 0


def resumable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` without :data:`RUN_ONLY_SETTINGS`: what must match for a checkpoint to be resumed."""
    return {key: value for key, value in settings.items() if key not in RUN_ONLY_SETTINGS}


def _save_checkpoint(path: Path, config: TrainConfig, position: LoopPosition, state: TrainingState) -> None:
    """Write a resumable checkpoint atomically; a full disk raises :class:`~n2vpipe.errors.DiskFullError`
    naming ``path`` and leaves the previous checkpoint as it was."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "config": config.to_dict(), **dataclasses.asdict(position),
                **state.state_dict()}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: old -> new`` for each resumable setting that differs."""
    saved, current = resumable_settings(saved), resumable_settings(current)
    return [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def _resume(checkpoint: Path, config: TrainConfig, state: TrainingState, device: torch.device) -> LoopPosition:
    """Restore ``state`` from ``checkpoint`` if it was written with the same settings (run-only
    settings aside) and return where the loop continues; a fresh start when there is none.

    A checkpoint from other settings (the config was edited), from another version of the
    format, or one that cannot be read is discarded, and the log says why.
    """
    if not checkpoint.exists():
        return LoopPosition()
    try:
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        log.warning("discarding %s: it cannot be read (%s); training starts afresh", checkpoint, error)
        checkpoint.unlink()
        return LoopPosition()
    if saved.get("format") != CHECKPOINT_FORMAT:
        log.warning("discarding %s: it was written by another version of n2vpipe; training starts afresh",
                    checkpoint)
        checkpoint.unlink()
        return LoopPosition()
    changed = _changed_settings(saved["config"], config.to_dict())
    if saved.get("warm_start") != state.warm_start:
        changed.append(f"the weights started from: {saved.get('warm_start')} -> {state.warm_start}")
    if changed:
        log.warning("discarding %s: it was written with other training settings (%s); training starts afresh",
                    checkpoint, "; ".join(changed))
        checkpoint.unlink()
        return LoopPosition()
    state.load_state_dict(saved)
    log.info("resuming from %s at step %d", checkpoint, saved["step"])
    return LoopPosition(int(saved["step"]), float(saved["elapsed_s"]), float(saved["running_loss"]),
                        int(saved["running_count"]))


class StoppedBySignal(SystemExit):
    """Training stopped by a signal after checkpointing; the process exits with ``128 + signal``,
    as a process killed by it would, so the job counts as failed and its rerun resumes."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@dataclass
class StopRequest:
    """The stop signal received, if any (set by the signal handler, read at the end of each step)."""

    signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        """Signal handler: remember the signal, let the current step finish."""
        self.signum = signum


@contextlib.contextmanager
def stop_requests(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Catch ``signals`` while the block runs, as a :class:`StopRequest`; the previous handlers come back
    afterwards. Outside the main thread (where Python takes no handlers) nothing is caught."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {number: signal.signal(number, request) for number in signals}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def train_n2v(zarr_path: Path, model_dir: Path, config: TrainConfig, threads: int = 1) -> ModelDescription:
    """Train a Noise2Void model on the OME-Zarr at ``zarr_path``; write it to ``model_dir``.

    The folder appears only when training has finished: step budget, the
    ``max_minutes`` wall-time budget, or early stopping (``early_stopping_patience``
    validations in a row without the validation loss falling more than
    ``early_stopping_min_delta`` below its best). When there is a validation
    region, the weights saved are those with the lowest validation loss, not
    the last ones (the averaged weights when ``ema_decay`` is above 0); the history
    records ``best_step``, ``best_val_loss`` and ``stopped_by`` (``steps``, ``max_minutes`` or ``early_stopping``).
    SIGTERM checkpoints at the end of the current step and raises :class:`StoppedBySignal`;
    the partial folder stays for the rerun to resume from.
    """
    configure_zarr(threads)
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = select_device(config.device)
    array, meta = open_ome_zarr(zarr_path)
    spec = build_spec(config, meta)
    if config.struct_mask is not None:
        struct_offsets(config.struct_mask, spec.ndim)
    grid = total_downsampling(spec)
    patch = effective_patch(meta, config, grid, zarr_path)
    normalisation = estimate_normalisation(array, meta, rng)
    train_region, val_region = split_regions(meta.spatial_shape, patch, config.validation_fraction, grid)
    log.info("training %s: %s on %s, patch %s, device %s, normalisation %s", zarr_path, spec, meta.axes,
             patch, device, normalisation)
    pool = PatchPool(array, meta, train_region, patch, normalisation, config.pool_tiles,
                     config.tile_refresh_every, rng)
    validation = None
    if val_region is not None:
        val_pool = PatchPool(array, meta, val_region, validation_patch(patch, val_region), normalisation, 2, 1,
                             np.random.default_rng(config.seed + 1))
        validation = ValidationSet.build(val_pool.sample(config.validation_patches), config,
                                         np.random.default_rng(config.seed + 2), device)
    elif config.early_stopping_patience:
        log.warning("early stopping is off: the volume is too small to hold out a validation region")
    start = warm_start(Path(config.init_from), spec, meta, zarr_path) if config.init_from else None
    model = UNet(spec)
    if start is not None:
        model.load_state_dict(start.weights)
        log.info("starting from the weights of %s (normalisation: this acquisition's own)", config.init_from)
    model = model.to(device, memory_format=memory_format(spec.ndim))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    arithmetic = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=arithmetic is torch.float16)
    state = TrainingState(model, optimizer, scaler, rng, pool, BestValidation(config.early_stopping_min_delta),
                          WeightAverage(model, config.ema_decay), start.record if start else None)
    with atomic_output(model_dir, keep_partial_on_error=True) as partial:
        partial.mkdir(parents=True, exist_ok=True)
        checkpoint = partial / CHECKPOINT_FILE
        position = _resume(checkpoint, config, state, device)
        try:
            with stop_requests() as stop:
                history = _run_steps(state, arithmetic, validation, config, device, partial, position, stop)
        except FloatingPointError as error:
            raise FloatingPointError(f"{zarr_path}: {error}") from error
        best, model = state.best, state.average.model
        if best.weights is not None:
            model.load_state_dict(best.weights)
            log.info("keeping the weights of step %d (lowest validation loss %.4f)", best.step, best.loss)
        description = ModelDescription(spec=spec, normalisation=normalisation, spatial_axes=meta.spatial_axes,
                                       training={**config.to_dict(), "effective_patch": list(patch),
                                                 "source": str(zarr_path), "device": str(device),
                                                 "arithmetic": arithmetic_name(arithmetic),
                                                 "warm_start": state.warm_start},
                                       history=history)
        model.eval()
        save_model(model, description, partial)
        plot_training_log(partial / LOG_FILE, partial / "loss.png", title=Path(zarr_path).parent.name)
        checkpoint.unlink(missing_ok=True)
    return description


def _truncate_log(log_path: Path, last_step: int) -> None:
    """Drop log rows written after the checkpoint a run resumes from (and a row cut short by a full disk)."""
    with open(log_path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if len(row) == len(LOG_COLUMNS) and int(row[0]) <= last_step]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(kept)
    write_bytes_atomic(log_path, text.getvalue().encode())


def _diverged(what: str, step: int, arithmetic: torch.dtype | None, learning_rate: float) -> FloatingPointError:
    """The error that stops a diverged run; the last checkpoint, saved before it, stays for the rerun."""
    return FloatingPointError(
        f"{what} by step {step} ({arithmetic_name(arithmetic)}, learning rate {learning_rate:.3g}); "
        "the last checkpoint is kept and a rerun resumes from it; if it recurs, lower train.learning_rate "
        "or set train.precision: float32")


def _run_steps(state: TrainingState, arithmetic: torch.dtype | None, validation: ValidationSet | None,
               config: TrainConfig,
               device: torch.device, folder: Path, start: LoopPosition, stop: StopRequest) -> dict[str, Any]:
    """The optimisation loop; appends to the CSV log, tracks the best validation and checkpoints as it goes.

    The network runs under autocast to ``arithmetic`` (:func:`autocast_dtype`; ``None``: float32).
    In float16, ``state.scaler`` scales the loss so that small gradients do not underflow and skips
    the steps whose gradients overflowed (bfloat16 and float32 need neither: it is disabled).
    A signal caught by ``stop`` checkpoints at the end of the step and raises :class:`StoppedBySignal`."""
    model, optimizer, scaler, rng, best = state.model, state.optimizer, state.scaler, state.rng, state.best
    log_path = folder / LOG_FILE
    new_log = start.step == 0 or not log_path.exists()
    if not new_log:
        _truncate_log(log_path, start.step)
    started = time.monotonic() - start.elapsed_s
    stop_reason = "steps"
    model.train()
    running = torch.tensor(start.running_loss, dtype=torch.float64, device=device)
    running_count = start.running_count
    with reporting_disk_full(log_path), open(log_path, "w" if new_log else "a", newline="") as handle, tqdm(
        total=config.steps, initial=start.step, desc="train", unit="step", disable=None,
        file=sys.stderr, mininterval=1,
    ) as progress:
        writer = csv.writer(handle)
        if new_log:
            writer.writerow(LOG_COLUMNS)
        step = start.step
        while step < config.steps:
            learning_rate = learning_rate_at(config, budget_progress(config, step, time.monotonic() - started))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            batch = augment(state.pool.sample(config.batch_size), rng)
            inputs, targets, masks = _masked_tensors(batch, config, rng, device)
            with torch.autocast(device.type, dtype=arithmetic, enabled=arithmetic is not None):
                prediction = model(inputs)
            loss = masked_loss(prediction.float(), targets, masks, config.loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            state.average.update(model, step)
            running += loss.detach()  # no .item() here: the CPU prepares the next batch while the GPU works
            running_count += 1
            progress.update(1)
            elapsed = time.monotonic() - started
            out_of_time = config.max_minutes > 0 and elapsed > config.max_minutes * 60
            if step % config.validate_every == 0 or step == config.steps or out_of_time:
                val_loss = validation.loss(state.average.model, config.loss) if validation else math.nan
                train_loss = float(running) / running_count
                if not math.isfinite(train_loss):
                    raise _diverged(f"training loss became {train_loss}", step, arithmetic, learning_rate)
                writer.writerow((step, train_loss, val_loss, learning_rate,
                                 round(elapsed, 2)))
                handle.flush()
                progress.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
                if progress.disable:
                    log.info("step %d/%d loss %.4f val %.4f", step, config.steps, train_loss, val_loss)
                running.zero_()
                running_count = 0
                if validation is not None:
                    best.record(step, val_loss, state.average.model)
                if 0 < config.early_stopping_patience <= best.stale:
                    stop_reason = "early_stopping"
                    log.info("early stopping at step %d: no improvement in %d validations", step, best.stale)
                    break
            if step % config.checkpoint_every == 0 or stop.signum is not None:
                if not all(bool(torch.isfinite(weights).all()) for weights in model.parameters()):
                    raise _diverged("weights became non-finite", step, arithmetic, learning_rate)
                _save_checkpoint(folder / CHECKPOINT_FILE, config,
                                 LoopPosition(step, elapsed, float(running), running_count), state)
            if stop.signum is not None:
                log.error("training stopped by %s at step %d of %d; the checkpoint %s is kept and rerunning "
                          "the job resumes from it", signal.Signals(stop.signum).name, step, config.steps,
                          folder / CHECKPOINT_FILE)
                raise StoppedBySignal(stop.signum)
            if out_of_time:
                stop_reason = "max_minutes"
                break
    return {"steps_done": step, "stopped_by": stop_reason, "elapsed_s": round(time.monotonic() - started, 2),
            "best_step": best.step, "best_val_loss": best.loss if best.step is not None else None}
