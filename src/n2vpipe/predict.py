"""Tiled, dask-parallel, resumable Noise2Void inference over an OME-Zarr volume.

Blocks are whole multiples of the output zarr chunks and start on the
network's pooling grid. Each block reads itself plus a halo of the network's
receptive reach (rounded up to the pooling grid) where the volume goes on; at
the volume border it reads no halo, because the network pads there exactly as
it does for the whole volume. It predicts, crops, and writes only its own chunks;
so the tiled result equals the whole-volume result, ``model(volume)``, and no two
tasks share a chunk. With ``tta``, each block's prediction is the mean over the flips
and 90-degree rotations of the image plane (Z as it is), taken after the padding to
the pooling grid, so that equality holds for that mean too.
A marker per finished block lets a killed run resume with the missing blocks.
On a CPU, dask threads read and write blocks while one thread runs the network,
one block at a time with all of torch's threads; keeping the network's
allocations in one thread keeps the memory it frees reusable (glibc keeps a heap
per thread), and the network itself streams each block in slabs
(:meth:`~n2vpipe.unet.UNet.forward_cropped`). With a ``dask.distributed``
scheduler address, the blocks run on its workers instead: each task is a
picklable :class:`BlockJob`, and each worker process loads the model once.

One acquisition's blocks can be split into parts run as separate jobs (on
separate nodes): each part writes disjoint blocks of one shared partial output,
and :func:`finalize_prediction` adds the pyramid and moves it into place. The
output is float32, or rescaled to uint8/uint16 with the mapping in its attributes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import dask
import numcodecs
import numpy as np
import torch
import zarr
from dask.callbacks import Callback
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from n2vpipe.config_section import Bound, ConfigSection
from n2vpipe.device import arithmetic_name, autocast_dtype, select_device, to_device
from n2vpipe.errors import reporting_disk_full
from n2vpipe.io import (
    ImageMeta,
    blosc_compressor,
    configure_zarr,
    create_ome_zarr,
    open_ome_zarr,
    partial_path,
    publish,
    read_region,
    remove_path,
    sample_voxels,
    write_pyramid,
)
from n2vpipe.model_io import WEIGHTS_FILE, ModelDescription, Normalisation, load_model, unreadable_model
from n2vpipe.unet import UNet, UNetSpec, Window, memory_format, receptive_reach, total_downsampling

log = logging.getLogger(__name__)

DONE_DIR = ".blocks_done"
INTEGER_OUTPUTS = {"uint8", "uint16"}

PREDICT_CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "float32", "bfloat16", "float16"),
    "compressor": ("zstd", "lz4", "lz4hc", "zlib", "blosclz"),
    "output_dtype": ("float32", "uint16", "uint8"),
}
"""The values each choice setting takes, as ``config/schema.yaml`` lists them."""
PREDICT_LIMITS: dict[str, Bound] = {
    "compression_level": (0, True, 9),
    "pyramid_levels": (1, True, 10),
    "jobs": (1, True, None),
}
"""The bounds of each integer inference setting, as ``config/schema.yaml`` sets them."""
BLOCK_AXES = {"block": ("z", "y", "x"), "block_2d": ("y", "x")}
"""The axes each block setting names, as ``config/schema.yaml`` requires them."""


@dataclass(frozen=True)
class PredictConfig(ConfigSection):
    """Inference settings; built from the ``predict`` section of the workflow config.

    ``block`` tiles images with Z, ``block_2d`` (Y and X) images without. An empty
    ``scheduler_address`` runs the blocks on threads in this process; ``jobs`` is the
    number of parts the workflow splits an acquisition into (:func:`predict_part`).
    """

    title: ClassVar[str] = "inference"
    choices: ClassVar[Mapping[str, tuple[str, ...]]] = PREDICT_CHOICES
    bounds: ClassVar[Mapping[str, Bound]] = PREDICT_LIMITS

    block: Mapping[str, int] = field(default_factory=lambda: {"z": 64, "y": 192, "x": 192})
    block_2d: Mapping[str, int] = field(default_factory=lambda: {"y": 384, "x": 384})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compressor: str = "zstd"
    compression_level: int = 5
    pyramid_levels: int = 3
    scheduler_address: str = ""
    jobs: int = 1
    output_dtype: Literal["float32", "uint16", "uint8"] = "float32"
    output_range: str | Sequence[float] = "auto"
    tta: bool = False

    def __post_init__(self) -> None:
        """Reject values outside what ``config/schema.yaml`` allows, so that a library caller meets the
        same limits as a workflow config."""
        problems = self.out_of_range()
        for name, axes in BLOCK_AXES.items():
            sizes = getattr(self, name)
            if set(sizes) != set(axes):
                problems.append(f"{name} must name the axes {', '.join(axes)}, not {', '.join(sizes) or 'none'}")
            problems += [f"{name}.{axis} must be >= 1, not {size!r}" for axis, size in sizes.items() if size < 1]
        if self.output_range != "auto" and (isinstance(self.output_range, str) or len(self.output_range) != 2):
            problems.append(f"output_range must be auto or [low, high], not {self.output_range!r}")
        self.refuse(problems)

    def block_for(self, spatial_axes: str) -> Mapping[str, int]:
        """The block sizes for an image with ``spatial_axes``: ``block_2d`` without Z, ``block`` with it."""
        return self.block if "z" in spatial_axes else self.block_2d


@dataclass(frozen=True)
class Block:
    """One unit of inference work: a time point, a channel and a spatial box."""

    t: int
    c: int
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def voxels(self) -> int:
        """Output voxels of this block."""
        return math.prod(e - s for s, e in zip(self.start, self.stop, strict=True))

    @property
    def name(self) -> str:
        """Stable identifier, used for the resume marker."""
        return f"t{self.t}_c{self.c}_" + "_".join(map(str, self.start))


def plan_blocks(meta: ImageMeta, block_shape: tuple[int, ...], chunks: tuple[int, ...],
                grid: tuple[int, ...]) -> list[Block]:
    """Cover the volume with blocks of ``block_shape`` (spatial), one channel and time point each.

    Raises ``ValueError`` unless every block side is a multiple of the zarr chunk
    and of the pooling grid (or spans the whole axis).
    """
    for axis, size, block, chunk, step in zip(meta.spatial_axes, meta.spatial_shape, block_shape, chunks, grid,
                                              strict=True):
        if block < size and (block % chunk or block % step):
            raise ValueError(f"block {block} along {axis} must be a multiple of the chunk ({chunk}) "
                             f"and of the network's pooling grid ({step})")
    starts = [range(0, size, block) for size, block in zip(meta.spatial_shape, block_shape, strict=True)]
    blocks = []
    for t, c in itertools.product(range(meta.size("t")), range(meta.size("c"))):
        for start in itertools.product(*starts):
            stop = tuple(min(s + b, n) for s, b, n in zip(start, block_shape, meta.spatial_shape, strict=True))
            blocks.append(Block(t, c, tuple(start), stop))
    return blocks


def halo_on_grid(spec: UNetSpec) -> tuple[int, ...]:
    """Halo per axis: the receptive reach rounded up to the pooling grid, so that a block read with it
    still starts on the grid."""
    return tuple(-(-r // g) * g for r, g in zip(receptive_reach(spec), total_downsampling(spec), strict=True))


def read_with_halo(array: zarr.Array, meta: ImageMeta, block: Block,
                   halo: tuple[int, ...]) -> tuple[np.ndarray, Window]:
    """Read ``block`` grown by ``halo`` on each side, clipped to the volume; return it with the
    ``(before, after)`` margin per axis that lies outside the block (0 at the volume border).
    An undecodable chunk raises :class:`~n2vpipe.errors.InputError` naming the store, array and chunk key."""
    lo = [max(0, s - h) for s, h in zip(block.start, halo, strict=True)]
    hi = [min(n, e + h) for e, h, n in zip(block.stop, halo, meta.spatial_shape, strict=True)]
    margins = tuple((s - a, b - e) for a, b, s, e in zip(lo, hi, block.start, block.stop, strict=True))
    return read_region(array, meta.key(block.t, block.c, lo, hi)), margins


PlaneSymmetry = tuple[int, bool]
"""A symmetry of the image plane: quarter turns of Y towards X, then whether X is flipped."""


def plane_symmetries(grid: tuple[int, ...]) -> list[PlaneSymmetry]:
    """The flips and rotations of the image plane (the last two axes) that test-time augmentation averages
    over: all eight, or the four without quarter turns when Y and X pool by other factors."""
    turns = (0, 1, 2, 3) if grid[-1] == grid[-2] else (0, 2)
    return [(turn, flip) for turn in turns for flip in (False, True)]


def turn_plane(array: np.ndarray, symmetry: PlaneSymmetry) -> np.ndarray:
    """``array`` under ``symmetry`` (a view)."""
    turns, flip = symmetry
    turned = np.rot90(array, turns, axes=(-2, -1))
    return turned[..., ::-1] if flip else turned


def unturn_plane(array: np.ndarray, symmetry: PlaneSymmetry) -> np.ndarray:
    """The inverse of :func:`turn_plane` (a view)."""
    turns, flip = symmetry
    return np.rot90(array[..., ::-1] if flip else array, -turns, axes=(-2, -1))


def turn_margins(margins: Window, symmetry: PlaneSymmetry) -> Window:
    """The ``(before, after)`` margins per axis of an array turned by ``symmetry``, given its own."""
    probe = np.zeros([lo + 1 + hi for lo, hi in margins[-2:]], dtype=bool)
    probe[margins[-2][0], margins[-1][0]] = True
    turned = turn_plane(probe, symmetry)
    corner = np.argwhere(turned)[0]
    return (*margins[:-2], *((int(c), int(n - 1 - c)) for c, n in zip(corner, turned.shape, strict=True)))


def _network_output(model: UNet, data: np.ndarray, device: torch.device, crop: Window | None,
                    arithmetic: torch.dtype | None) -> np.ndarray:
    """``model`` on one array already on the pooling grid, less ``crop`` (``None``: the whole output)."""
    tensor = to_device(np.ascontiguousarray(data)[None, None], device, memory_format(data.ndim))
    with torch.inference_mode(), torch.autocast(device.type, dtype=arithmetic, enabled=arithmetic is not None):
        out = model(tensor) if crop is None else model.forward_cropped(tensor, crop)
    return out.float()[0, 0].cpu().numpy()


def run_network(model: UNet, data: np.ndarray, grid: tuple[int, ...], device: torch.device,
                margins: Window | None = None, arithmetic: torch.dtype | None = None,
                tta: bool = False) -> np.ndarray:
    """Apply ``model`` to one normalised single-channel array, reflect-padding its end up to the pooling grid.

    With ``margins`` (``(before, after)`` per axis) the result leaves them out
    (:meth:`UNet.forward_cropped`: the decoder runs only where the output needs it).
    ``arithmetic`` (bfloat16 or float16) runs it under autocast to that dtype (float32 result).
    ``tta`` averages the outputs over :func:`plane_symmetries` of the padded array (8 passes: 8 times the compute).
    """
    pad = [(0, (-s) % g) for s, g in zip(data.shape, grid, strict=True)]
    padded = np.pad(data, pad, mode="reflect") if any(p for _, p in pad) else data
    crop = None if margins is None else tuple((lo, hi + p) for (lo, hi), (_, p) in zip(margins, pad, strict=True))
    symmetries = plane_symmetries(grid) if tta else [(0, False)]
    total = None
    for symmetry in symmetries:
        turned_crop = None if crop is None else turn_margins(crop, symmetry)
        out = unturn_plane(_network_output(model, turn_plane(padded, symmetry), device, turned_crop, arithmetic),
                           symmetry)
        total = out if total is None else total + out
    mean = total if len(symmetries) == 1 else total / np.float32(len(symmetries))
    return np.ascontiguousarray(mean if margins is not None else mean[tuple(slice(0, s) for s in data.shape)])


def denoise_with_halo(data: np.ndarray, margins: Window, model: UNet, normalisation: Normalisation, block: Block,
                      grid: tuple[int, ...], device: torch.device, network_thread: Executor | None = None,
                      arithmetic: torch.dtype | None = None, tta: bool = False) -> np.ndarray:
    """Denoise ``block`` from its data read with halo (``margins`` around it; intensities in the input's
    scale, float32).

    ``network_thread``, when given, runs the forward pass (one at a time), so other
    blocks' reads and writes overlap with it and the network's memory is allocated and
    reused in one thread; ``arithmetic`` and ``tta`` as in :func:`run_network`.
    """
    normalised = normalisation.apply(data, block.c)
    arguments = (model, normalised, grid, device, margins, arithmetic, tta)
    out = network_thread.submit(run_network, *arguments).result() if network_thread else run_network(*arguments)
    return normalisation.invert(out, block.c)


def fuse_batch_norm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it (same output, one pass less)."""
    for child in module.children():
        fuse_batch_norm(child)
    if isinstance(module, torch.nn.Sequential):
        layers = list(module)
        for i in range(len(layers) - 1):
            conv, norm = layers[i], layers[i + 1]
            if isinstance(conv, torch.nn.modules.conv._ConvNd) \
                    and isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = torch.nn.Identity()
    return module


@dataclass(frozen=True)
class OutputEncoding:
    """How denoised intensities are stored: float32, or rescaled linearly to an unsigned integer type.

    For integers, ``low[c]`` (input intensity) is stored as 0 and ``high[c]`` as the
    type's maximum, clipped outside; ``value = offset + scale * stored`` recovers
    intensities (written to the output's attributes).
    """

    dtype: str = "float32"
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @classmethod
    def choose(cls, dtype: str, output_range: str | Sequence[float], array: zarr.Array,
               meta: ImageMeta) -> OutputEncoding:
        """``output_range`` is ``[low, high]`` for every channel, or ``"auto"``: the 0.01st-99.99th
        percentiles of the input per channel, sampled over the whole volume (with a fixed seed,
        so every inference job of an acquisition gets the same)."""
        if dtype == "float32":
            return cls()
        if dtype not in INTEGER_OUTPUTS:
            raise ValueError(f"output dtype must be float32 or one of {sorted(INTEGER_OUTPUTS)}, got {dtype!r}")
        if output_range == "auto":
            rng = np.random.default_rng(0)
            bounds = [np.percentile(sample_voxels(array, meta, c, rng), [0.01, 99.99]) for c in range(meta.size("c"))]
            low, high = tuple(float(b[0]) for b in bounds), tuple(float(b[1]) for b in bounds)
        else:
            low, high = (float(output_range[0]),) * meta.size("c"), (float(output_range[1]),) * meta.size("c")
        if any(h <= lo for lo, h in zip(low, high, strict=True)):
            raise ValueError(f"output range needs low < high, got low {low}, high {high}")
        return cls(dtype, low, high)

    def encode(self, values: np.ndarray, channel: int) -> np.ndarray:
        """``values`` (input intensities) in the stored type."""
        if self.dtype == "float32":
            return values.astype(np.float32, copy=False)
        top = np.iinfo(self.dtype).max
        scaled = (values - self.low[channel]) * (top / (self.high[channel] - self.low[channel]))
        return np.clip(np.rint(scaled), 0, top).astype(self.dtype)

    def attrs(self) -> dict[str, object]:
        """Attributes that tell readers how to get intensities back."""
        if self.dtype == "float32":
            return {"dtype": "float32"}
        top = np.iinfo(self.dtype).max
        return {"dtype": self.dtype, "offset": list(self.low),
                "scale": [(h - lo) / top for lo, h in zip(self.low, self.high, strict=True)]}


class BlockTimes(NamedTuple):
    """What one finished block reports: its output voxels and the seconds spent reading, computing, writing."""

    voxels: int
    read_s: float
    compute_s: float
    write_s: float


@dataclass
class PredictionStats:
    """What one inference job did, and where its time went (read, compute, write summed over blocks)."""

    blocks: int = 0
    voxels: int = 0
    read_s: float = 0.0
    compute_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0

    def add(self, times: BlockTimes) -> None:
        """Account for one finished block."""
        self.blocks += 1
        self.voxels += times.voxels
        self.read_s += times.read_s
        self.compute_s += times.compute_s
        self.write_s += times.write_s

    def summary(self) -> str:
        """One log line."""
        rate = self.voxels / self.wall_s / 1e6 if self.wall_s else 0.0
        return (f"{self.blocks} blocks, {self.voxels / 1e6:.1f} M voxels in {self.wall_s:.1f} s "
                f"({rate:.2f} M voxels/s); read {self.read_s:.1f} s, compute {self.compute_s:.1f} s, "
                f"write {self.write_s:.1f} s (summed over blocks)")


class BlockProgress:
    """A progress bar in voxels (rate, ETA) on a terminal; a log line every ``log_every`` blocks otherwise."""

    def __init__(self, total_blocks: int, total_voxels: int, log_every: int = 10) -> None:
        self.bar = tqdm(total=total_voxels, unit="vox", unit_scale=True, desc="predict", disable=None,
                        file=sys.stderr, mininterval=1)
        self.total_blocks, self.log_every, self.done = total_blocks, log_every, 0

    def update(self, voxels: int) -> None:
        """One more block finished."""
        self.done += 1
        self.bar.update(voxels)
        if self.bar.disable and (self.done % self.log_every == 0 or self.done == self.total_blocks):
            log.info("predict: %d/%d blocks", self.done, self.total_blocks)

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def _weights_digest(model_dir: Path) -> str:
    """SHA-256 of the model's weights file (a missing one raises :class:`~n2vpipe.errors.InputError` naming it)."""
    path = Path(model_dir) / WEIGHTS_FILE
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError as error:
        raise unreadable_model(path, Path(model_dir), "the weights file is missing") from error


def _fingerprint(weights_digest: str, block_shape: tuple[int, ...], encoding_settings: tuple[object, ...]) -> str:
    """Identifies the weights, tiling and output type a partial output was started with."""
    return hashlib.sha256(repr((weights_digest, block_shape, encoding_settings)).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def inference_model(model_dir: Path, weights_digest: str, device: torch.device) -> tuple[UNet, ModelDescription]:
    """The model in ``model_dir`` ready for inference on ``device`` (BatchNorm folded into the convolutions,
    channels-last), loaded once per process; ``weights_digest`` tells retrained weights apart."""
    model, description = load_model(model_dir, device)
    model = fuse_batch_norm(model).to(memory_format=memory_format(description.spec.ndim))
    return model, description


@functools.cache
def cpu_network_thread(torch_threads: int) -> ThreadPoolExecutor:
    """This process's thread for forward passes on the CPU on ``torch_threads`` threads (see
    :func:`denoise_with_halo`); block tasks on any number of other threads read and write alongside it."""
    return ThreadPoolExecutor(1, "n2vpipe-network", initializer=torch.set_num_threads, initargs=(torch_threads,))


def _worker_threads() -> int:
    """The task threads of the ``dask.distributed`` worker this runs on (its share of the node's cores)."""
    from distributed import get_worker

    return get_worker().state.nthreads


class NonFiniteOutput(ValueError):
    """The network produced NaN or infinite values; nothing of the block is written (the job logs it as one line)."""


def check_finite(result: np.ndarray, block: Block, model_dir: Path) -> None:
    """Raise :class:`NonFiniteOutput` when ``result`` holds NaN or infinite values (a diverged model, or
    intensities beyond float32), so that they are never written to an output that looks finished."""
    bad = result.size - int(np.count_nonzero(np.isfinite(result)))
    if bad:
        raise NonFiniteOutput(f"{model_dir}: the model's output for block {block.name} has {bad:,} NaN or infinite "
                              "values; nothing of it was written. The model diverged (delete the model folder and "
                              "rerun, with train.precision: float32 if it used another) or the input's intensities lie "
                              "beyond float32's range (rescale the input)")


@dataclass
class BlockJob:
    """Reads one block with its halo, denoises it, writes its chunks of the partial output and marks it done.

    Picklable, so ``dask.distributed`` workers can run it: they open the arrays,
    load the model and start their :func:`cpu_network_thread` themselves. On the CPU the
    network runs on ``torch_threads`` threads; ``None``: as many as the worker has.
    """

    raw_zarr: Path
    model_dir: Path
    weights_digest: str
    partial: Path
    halo: tuple[int, ...]
    device: str
    precision: str
    encoding: OutputEncoding
    torch_threads: int | None
    tta: bool = False

    def __getstate__(self) -> dict[str, object]:
        """Everything but the opened arrays (a worker opens its own)."""
        state = dict(self.__dict__)
        state.pop("arrays", None)
        return state

    @functools.cached_property
    def arrays(self) -> tuple[zarr.Array, ImageMeta, zarr.Array]:
        """The input array, its metadata and the partial output's level 0, opened once per process."""
        array, meta = open_ome_zarr(self.raw_zarr)
        return array, meta, zarr.open_array(str(self.partial / "0"), mode="r+")

    def __call__(self, item: Block) -> BlockTimes:
        """Do ``item``; return its voxels and timings."""
        tick = time.perf_counter()
        array, meta, target = self.arrays
        data, margins = read_with_halo(array, meta, item, self.halo)
        read_done = time.perf_counter()
        device = select_device(self.device)
        model, description = inference_model(self.model_dir, self.weights_digest, device)
        result = denoise_with_halo(data, margins, model, description.normalisation, item,
                                   total_downsampling(description.spec), device,
                                   self._network_thread(device),
                                   autocast_dtype(self.precision, device), self.tta)
        computed = time.perf_counter()
        check_finite(result, item, self.model_dir)
        with reporting_disk_full(self.partial):
            target[meta.key(item.t, item.c, item.start, item.stop)] = self.encoding.encode(result, item.c)
        marker = self.partial / DONE_DIR / item.name
        with reporting_disk_full(marker):
            marker.touch()
        return BlockTimes(item.voxels, read_done - tick, computed - read_done, time.perf_counter() - computed)

    def _network_thread(self, device: torch.device) -> Executor | None:
        """The thread that runs the network on the CPU; none on a GPU."""
        if device.type != "cpu":
            return None
        return cpu_network_thread(self.torch_threads or _worker_threads())


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (several inference jobs may start at once)."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_or_create_output(partial: Path, meta: ImageMeta, chunks: tuple[int, ...], compressor: numcodecs.Blosc,
                           fingerprint: str, name: str, blocks_total: int,
                           make_encoding: Callable[[], OutputEncoding]) -> OutputEncoding:
    """Reuse a partial output started with the same model, tiling and output type; otherwise start afresh.
    Returns its output encoding."""
    if partial.exists():
        try:
            group = zarr.open_group(str(partial), mode="r+")
            attrs = group.attrs.get("n2vpipe", {})
            if attrs.get("fingerprint") == fingerprint:
                log.info("resuming partial output %s", partial)
                encoding = attrs["encoding"]
                return OutputEncoding(encoding["dtype"], tuple(encoding["low"]), tuple(encoding["high"]))
        except (zarr.errors.GroupNotFoundError, KeyError, FileNotFoundError):
            pass
        log.info("discarding partial output %s from another model, tiling or output type", partial)
        remove_path(partial)
    encoding = make_encoding()
    out_meta = ImageMeta(meta.axes, meta.shape, encoding.dtype, meta.scale, meta.unit)
    full_chunks = tuple(1 if a in "tc" else chunks[meta.spatial_axes.index(a)] for a in meta.axes)
    attrs = {"fingerprint": fingerprint, "blocks_total": blocks_total, "intensity": encoding.attrs(),
             "encoding": {"dtype": encoding.dtype, "low": list(encoding.low), "high": list(encoding.high)}}
    with reporting_disk_full(partial):
        create_ome_zarr(partial, out_meta, full_chunks, compressor, name,
                        extra_attrs=attrs)
        (partial / DONE_DIR).mkdir()
    return encoding


def run_block_jobs(job: BlockJob, blocks: Sequence[Block], on_done: Callable[[BlockTimes], None], threads: int,
                   scheduler_address: str | None = None) -> None:
    """Run ``job`` on every block as dask tasks, calling ``on_done`` in this thread as each one finishes.

    The threaded scheduler with ``threads`` workers, or the ``dask.distributed``
    scheduler at ``scheduler_address``. The first failing block's error is raised.
    """
    tasks = [dask.delayed(job, pure=False)(item, dask_key_name=f"block-{item.name}") for item in blocks]
    if scheduler_address:
        from distributed import Client, as_completed

        with Client(scheduler_address, timeout="60s") as client:
            for future in as_completed(client.compute(tasks)):
                on_done(future.result())
        return
    with Callback(posttask=lambda _key, result, *_: on_done(result)):  # the graph holds the block tasks only
        dask.compute(*tasks, scheduler="threads", num_workers=threads)


def part_of(blocks: Sequence[Block], part: int, parts: int) -> list[Block]:
    """The ``part``-th of ``parts`` contiguous, disjoint runs of ``blocks`` (together: all of them)."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not one of 0..{parts - 1}")
    return list(blocks[part * len(blocks) // parts:(part + 1) * len(blocks) // parts])


def predict_part(raw_zarr: Path, model_dir: Path, dst: Path, config: PredictConfig, part: int = 0, parts: int = 1,
                 threads: int = 1) -> PredictionStats:
    """Denoise part ``part`` of ``parts`` of ``raw_zarr`` into the partial output of ``dst``, as ``config`` says.

    Parts write disjoint blocks (whole output chunks) of one shared partial
    OME-Zarr, so they can run as separate jobs on separate nodes; blocks already
    marked done (a killed earlier run) are skipped. :func:`finalize_prediction`
    turns the partial output into ``dst`` once every part is done. ``config.precision``:
    ``float32``, ``bfloat16``, ``float16`` or ``auto`` (:func:`~n2vpipe.device.autocast_dtype`).
    """
    started = time.monotonic()
    configure_zarr(threads)
    torch_device = select_device(config.device)
    weights_digest = _weights_digest(model_dir)
    _, description = inference_model(Path(model_dir), weights_digest, torch_device)
    array, meta = open_ome_zarr(raw_zarr)
    if meta.spatial_axes != description.spatial_axes:
        raise ValueError(f"{raw_zarr}: axes {meta.spatial_axes} do not match the model's {description.spatial_axes}")
    grid = total_downsampling(description.spec)
    halo = halo_on_grid(description.spec)
    sizes = config.block_for(meta.spatial_axes)
    block = tuple(min(int(sizes[a]), s) for a, s in zip(meta.spatial_axes, meta.spatial_shape, strict=True))
    blocks = plan_blocks(meta, block, block, grid)
    torch.set_num_threads(max(1, threads))
    partial = partial_path(dst)
    fingerprint = _fingerprint(weights_digest, block, (config.output_dtype, config.output_range, config.precision,
                                                       *(("tta",) if config.tta else ())))
    with _exclusive(partial.with_name(partial.name + ".lock")):
        encoding = _open_or_create_output(
            partial, meta, block, blosc_compressor(config.compressor, config.compression_level), fingerprint,
            Path(dst).parent.name, len(blocks),
            lambda: OutputEncoding.choose(config.output_dtype, config.output_range, array, meta))
    mine = part_of(blocks, part, parts)
    pending = [b for b in mine if not (partial / DONE_DIR / b.name).exists()]
    scheduler_address = config.scheduler_address or None
    where = f"the dask.distributed scheduler {scheduler_address}" if scheduler_address else str(torch_device)
    log.info("predict %s part %d/%d: %d of %d blocks of %s (halo %s, grid %s), %d already done; output %s; "
             "network in %s on %s", raw_zarr, part + 1, parts, len(mine), len(blocks), block, halo, grid,
             len(mine) - len(pending), encoding.dtype,
             arithmetic_name(autocast_dtype(config.precision, torch_device)), where)
    job = BlockJob(raw_zarr=Path(raw_zarr), model_dir=Path(model_dir), weights_digest=weights_digest,
                   partial=partial, halo=halo, device=config.device, precision=config.precision, encoding=encoding,
                   torch_threads=None if scheduler_address else max(1, threads), tta=config.tta)
    stats = PredictionStats()
    progress = BlockProgress(len(pending), sum(b.voxels for b in pending))

    def finished(times: BlockTimes) -> None:
        stats.add(times)
        progress.update(times.voxels)

    try:
        run_block_jobs(job, pending, finished, threads, scheduler_address)
    finally:
        progress.close()
    stats.wall_s = time.monotonic() - started
    log.info("predict part %d/%d: %s", part + 1, parts, stats.summary())
    return stats


def finalize_prediction(dst: Path, config: PredictConfig) -> int:
    """Check every block of the partial output is done, add ``config.pyramid_levels`` pyramid levels
    (compressed as ``config`` says) and move it to ``dst``.

    Returns the number of pyramid levels. Raises ``RuntimeError`` naming what is missing.
    """
    partial = partial_path(dst)
    if not partial.exists():
        raise RuntimeError(f"{partial}: no partial output; run the inference parts first")
    done_dir = partial / DONE_DIR
    expected = zarr.open_group(str(partial), mode="r").attrs["n2vpipe"]["blocks_total"]
    finished = len(os.listdir(done_dir))
    if finished != expected:
        raise RuntimeError(f"{partial}: {finished} of {expected} blocks are done; rerun the inference parts")
    with reporting_disk_full(partial):
        levels = write_pyramid(partial, config.pyramid_levels,
                               blosc_compressor(config.compressor, config.compression_level))
    remove_path(done_dir)
    publish(partial, Path(dst))
    remove_path(partial.with_name(partial.name + ".lock"))
    log.info("wrote %s (%d pyramid level(s))", dst, levels)
    return levels


def predict_volume(raw_zarr: Path, model_dir: Path, dst: Path, config: PredictConfig,
                   threads: int = 1) -> PredictionStats:
    """Denoise ``raw_zarr`` with the model in ``model_dir`` into a new OME-Zarr at ``dst``, in one job.

    ``dst`` appears only once every block is written; a killed run resumes with
    the blocks it had not finished.
    """
    stats = predict_part(raw_zarr, model_dir, dst, config, threads=threads)
    finalize_prediction(dst, config)
    return stats
