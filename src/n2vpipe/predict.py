"""Tiled, dask-parallel, resumable Noise2Void inference over an OME-Zarr volume.

Blocks are whole multiples of the output zarr chunks and start on the
network's pooling grid. Each block reads itself plus a halo equal to the
network's receptive reach (reflect-padded at the volume border, exactly as the
whole volume would be), predicts, crops, and writes only its own chunks; so the
tiled result equals the whole-volume result and no two tasks share a chunk.
A marker per finished block lets a killed run resume with the missing blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import torch
import zarr
from tqdm.dask import TqdmCallback

from n2vpipe.io import (
    ImageMeta,
    atomic_output,
    blosc_compressor,
    create_ome_zarr,
    open_ome_zarr,
    remove_path,
    write_pyramid,
)
from n2vpipe.model_io import WEIGHTS_FILE, Normalisation, load_model
from n2vpipe.train import select_device
from n2vpipe.unet import UNet, memory_format, receptive_reach, total_downsampling

log = logging.getLogger(__name__)

DONE_DIR = ".blocks_done"


@dataclass(frozen=True)
class Block:
    """One unit of inference work: a time point, a channel and a spatial box."""

    t: int
    c: int
    start: tuple[int, ...]
    stop: tuple[int, ...]

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
    for axis, size, block, chunk, step in zip(meta.spatial_axes, meta.spatial_shape, block_shape, chunks, grid):
        if block < size and (block % chunk or block % step):
            raise ValueError(f"block {block} along {axis} must be a multiple of the chunk ({chunk}) "
                             f"and of the network's pooling grid ({step})")
    starts = [range(0, size, block) for size, block in zip(meta.spatial_shape, block_shape)]
    blocks = []
    for t, c in itertools.product(range(meta.size("t")), range(meta.size("c"))):
        for start in itertools.product(*starts):
            stop = tuple(min(s + b, n) for s, b, n in zip(start, block_shape, meta.spatial_shape))
            blocks.append(Block(t, c, tuple(start), stop))
    return blocks


def read_with_halo(array: zarr.Array, meta: ImageMeta, block: Block, halo: tuple[int, ...]) -> np.ndarray:
    """Read ``block`` grown by ``halo`` on each side, reflect-padding what lies outside the volume."""
    lo = [max(0, s - h) for s, h in zip(block.start, halo)]
    hi = [min(n, e + h) for e, h, n in zip(block.stop, halo, meta.spatial_shape)]
    data = np.asarray(array[meta.key(block.t, block.c, lo, hi)])
    pad = [(a - (s - h), (e + h) - b) for a, b, s, e, h in zip(lo, hi, block.start, block.stop, halo)]
    return np.pad(data, pad, mode="reflect") if any(p for pair in pad for p in pair) else data


def run_network(model: UNet, data: np.ndarray, grid: tuple[int, ...], device: torch.device) -> np.ndarray:
    """Apply ``model`` to one normalised single-channel array, padding its end up to the pooling grid."""
    pad = [(0, (-s) % g) for s, g in zip(data.shape, grid)]
    padded = np.pad(data, pad, mode="reflect") if any(p for _, p in pad) else data
    tensor = torch.from_numpy(np.ascontiguousarray(padded))[None, None]
    tensor = tensor.to(device, memory_format=memory_format(data.ndim))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(tensor).float()[0, 0].cpu().numpy()
    return out[tuple(slice(0, s) for s in data.shape)]


def predict_block(array: zarr.Array, meta: ImageMeta, model: UNet, normalisation: Normalisation, block: Block,
                  halo: tuple[int, ...], grid: tuple[int, ...], device: torch.device,
                  compute_lock: contextlib.AbstractContextManager | None = None) -> np.ndarray:
    """Denoise one block (intensities in the input's scale, float32).

    ``compute_lock``, when given, is held only around the forward pass, so other
    blocks' reads and writes overlap with it.
    """
    data = normalisation.apply(read_with_halo(array, meta, block, halo), block.c)
    with compute_lock or contextlib.nullcontext():
        out = run_network(model, data, grid, device)
    crop = tuple(slice(h, h + (e - s)) for h, s, e in zip(halo, block.start, block.stop))
    return normalisation.invert(out[crop], block.c)


def _fingerprint(model_dir: Path, block_shape: tuple[int, ...]) -> str:
    """Identifies the weights and tiling a partial output was started with."""
    digest = hashlib.sha256((Path(model_dir) / WEIGHTS_FILE).read_bytes())
    digest.update(repr(block_shape).encode())
    return digest.hexdigest()


def _open_or_create_output(partial: Path, meta: ImageMeta, chunks: tuple[int, ...], compressor: str,
                           level: int, fingerprint: str, name: str) -> zarr.Array:
    """Reuse a partial output started with the same model and tiling; otherwise start afresh."""
    if partial.exists():
        try:
            group = zarr.open_group(str(partial), mode="r+")
            if group.attrs.get("n2vpipe", {}).get("fingerprint") == fingerprint:
                log.info("resuming partial output %s", partial)
                return group["0"]
        except (zarr.errors.GroupNotFoundError, KeyError, FileNotFoundError):
            pass
        log.info("discarding partial output %s from another model or tiling", partial)
        remove_path(partial)
    out_meta = ImageMeta(meta.axes, meta.shape, "float32", meta.scale, meta.unit)
    full_chunks = tuple(1 if a in "tc" else chunks[meta.spatial_axes.index(a)] for a in meta.axes)
    return create_ome_zarr(partial, out_meta, full_chunks, blosc_compressor(compressor, level), name,
                           extra_attrs={"fingerprint": fingerprint})


def _scheduler_settings(threads: int, scheduler_address: str | None) -> Mapping[str, object]:
    """Dask settings: the threaded scheduler with ``threads`` workers, or a distributed one."""
    if scheduler_address:
        from dask.distributed import Client

        return {"scheduler": Client(scheduler_address)}
    return {"scheduler": "threads", "num_workers": threads}


def predict_volume(raw_zarr: Path, model_dir: Path, dst: Path, block_shape: Mapping[str, int], threads: int = 1,
                   device: str = "auto", compressor: str = "zstd", compression_level: int = 5,
                   pyramid_levels: int = 1, scheduler_address: str | None = None) -> int:
    """Denoise ``raw_zarr`` with the model in ``model_dir`` into a new OME-Zarr at ``dst``.

    Returns the number of blocks computed in this run (fewer than planned when
    resuming). ``dst`` appears only once every block is written.
    """
    torch_device = select_device(device)
    model, description = load_model(model_dir, torch_device)
    array, meta = open_ome_zarr(raw_zarr)
    if meta.spatial_axes != description.spatial_axes:
        raise ValueError(f"{raw_zarr}: axes {meta.spatial_axes} do not match the model's {description.spatial_axes}")
    grid = total_downsampling(description.spec)
    halo = receptive_reach(description.spec)
    block = tuple(min(int(block_shape[a]), s) for a, s in zip(meta.spatial_axes, meta.spatial_shape))
    blocks = plan_blocks(meta, block, block, grid)
    torch.set_num_threads(max(1, threads))
    with atomic_output(dst, keep_partial_on_error=True) as partial:
        target = _open_or_create_output(partial, meta, block, compressor, compression_level,
                                        _fingerprint(model_dir, block), Path(dst).parent.name)
        done_dir = partial / DONE_DIR
        done_dir.mkdir(exist_ok=True)
        pending = [b for b in blocks if not (done_dir / b.name).exists()]
        log.info("predict %s: %d blocks of %s (halo %s, grid %s), %d already done", raw_zarr,
                 len(blocks), block, halo, grid, len(blocks) - len(pending))
        compute_lock = threading.Lock() if torch_device.type == "cpu" else None

        def process(item: Block) -> None:
            result = predict_block(array, meta, model, description.normalisation, item, halo, grid, torch_device,
                                   compute_lock)
            target[meta.key(item.t, item.c, item.start, item.stop)] = result
            (done_dir / item.name).touch()

        tasks = [dask.delayed(process)(item, dask_key_name=f"block-{item.name}") for item in pending]
        with dask.config.set(_scheduler_settings(threads, scheduler_address)), TqdmCallback(desc="predict",
                                                                                             mininterval=1):
            dask.compute(*tasks)
        remove_path(done_dir)
        write_pyramid(partial, pyramid_levels, blosc_compressor(compressor, compression_level))
    return len(pending)
