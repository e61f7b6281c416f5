"""Ingest: TIFF-family input → chunked, compressed OME-Zarr, never the whole volume in RAM."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

import dask
import dask.array as da
import dask.threaded
import numpy as np
import zarr
from tqdm.dask import TqdmCallback

from n2vpipe.errors import InputError, reporting_disk_full
from n2vpipe.io import (
    ContiguousTiffArray,
    ImageMeta,
    atomic_output,
    blosc_compressor,
    configure_zarr,
    create_ome_zarr,
    open_tiff_lazy,
    write_pyramid,
)

log = logging.getLogger(__name__)


def chunk_shape(meta: ImageMeta, spatial_chunks: Mapping[str, int]) -> tuple[int, ...]:
    """Zarr chunk shape for ``meta``: one channel and time point per chunk, spatial sizes from config."""
    return tuple(min(spatial_chunks.get(a, 1), s) if a in "zyx" else 1
                 for a, s in zip(meta.axes, meta.shape, strict=True))


class StorageAlignedReader:
    """Chunk-sized reads from a TIFF source, rounded out to its whole strips or tiles and cached.

    A TIFF stores a plane in strips (runs of full-width rows) or in tiles, and
    decoding any part of one costs all of it. A chunk is therefore read as the
    region around it in whole strips or tiles: for strips, the band of full-width
    rows; for tiles, just the tiles it touches. The chunks beside it share that
    read: the region stays cached until a chunk outside it is asked for. Memory is
    one region (plus the one a reader may still be copying from), whatever the
    volume size; with strips it follows the plane width.
    """

    def __init__(self, source: zarr.Array, storage: tuple[int, int], path: Path) -> None:
        self.source, self.storage, self.path = source, storage, path
        self.shape, self.dtype, self.ndim = tuple(source.shape), np.dtype(source.dtype), len(source.shape)
        self._lock = threading.Lock()
        self._region_key: tuple[slice, ...] | None = None
        self._region: np.ndarray | None = None

    def region_key(self, key: tuple[slice, ...]) -> tuple[slice, ...]:
        """The region in whole strips or tiles (``storage``: their rows and columns) that holds ``key``."""
        aligned = []
        for extent, size, step in zip(key[-2:], self.shape[-2:], self.storage, strict=True):
            start = extent.start // step * step
            aligned.append(slice(start, min(size, -(-extent.stop // step) * step)))
        return (*key[:-2], *aligned)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """A copy of the region ``key`` (one slice per axis), read through the cache.

        Raises :class:`InputError` naming the file when its data cannot be decoded
        (a damaged strip or tile: imagecodecs raises ``RuntimeError``s, tifffile ``ValueError``s).
        """
        key = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape, strict=True))
        region_key = self.region_key(key)
        with self._lock:
            if region_key != self._region_key:
                self._region, self._region_key = None, None
                try:
                    self._region = np.asarray(self.source[region_key])
                except (RuntimeError, ValueError) as err:
                    where = ", ".join(f"{k.start}:{k.stop}" for k in region_key)
                    raise InputError(f"{self.path}: cannot decode the image data at [{where}]: {err}") from err
                self._region_key = region_key
            region = self._region
        inner = tuple(slice(k.start - r.start, k.stop - r.start)
                      for k, r in zip(key[-2:], region_key[-2:], strict=True))
        return region[(..., *inner)].copy()


class NonFiniteCounter:
    """A dask ``store`` target that writes each chunk to a zarr array and counts its NaN and Inf voxels
    on the way (float data only: the chunk is in memory anyway, so this costs one pass over it)."""

    def __init__(self, target: zarr.Array) -> None:
        self.target, self.shape, self.dtype, self.ndim = target, target.shape, target.dtype, target.ndim
        self._counts: list[int] = []

    def __setitem__(self, key: tuple[slice, ...], chunk: np.ndarray) -> None:
        """Count the chunk's non-finite voxels, then write it."""
        self._counts.append(chunk.size - int(np.count_nonzero(np.isfinite(chunk))))
        self.target[key] = chunk

    @property
    def non_finite(self) -> int:
        """NaN and Inf voxels in the chunks written so far."""
        return sum(self._counts)


def ingest_tiff(
    src: Path,
    dst: Path,
    spatial_chunks: Mapping[str, int],
    compressor: str = "zstd",
    compression_level: int = 5,
    pyramid_levels: int = 1,
    threads: int = 1,
) -> ImageMeta:
    """Copy the TIFF (or plane folder) ``src`` into a new OME-Zarr at ``dst``.

    Dask reads the source chunk by chunk, compressed files through a
    :class:`StorageAlignedReader` (whole strips or tiles, one region in memory),
    uncompressed contiguous ones by byte range, and writes with ``threads`` workers; dask
    chunks equal zarr chunks, so no two tasks write the same chunk. ``dst``
    appears only once complete. The headers are checked before any work (see
    :func:`n2vpipe.io.open_tiff_lazy`), and float voxels are counted for NaN and Inf
    as they are stored: a file with any fails, leaving no output
    (:data:`n2vpipe.tiff_checks.DTYPE_POLICY`).
    """
    configure_zarr(threads)
    codec = blosc_compressor(compressor, compression_level)
    with open_tiff_lazy(src) as (source, meta, permutation):
        chunks = chunk_shape(meta, spatial_chunks)
        if isinstance(source, ContiguousTiffArray):
            reader = source
        else:
            reader = StorageAlignedReader(source, source.chunks[-2:], src)
        source_chunks = tuple(chunks[permutation.index(i)] for i in range(len(permutation)))
        empty = np.empty((0,) * source.ndim, dtype=source.dtype)
        lazy = da.from_array(reader, chunks=source_chunks, lock=False, meta=empty).transpose(permutation)
        log.info("ingest %s: axes %s shape %s dtype %s voxel %s %s, read %s", src, meta.axes, meta.shape,
                 meta.dtype, meta.scale, meta.unit,
                 "by byte range" if reader is source else f"in whole strips/tiles of {source.chunks[-2:]}")
        with atomic_output(dst) as partial, reporting_disk_full(dst):
            target = create_ome_zarr(partial, meta, chunks, codec, name=Path(dst).parent.name,
                                     extra_attrs={"source": str(src)})
            sink = NonFiniteCounter(target) if np.dtype(meta.dtype).kind == "f" else target
            with dask.config.set(scheduler=dask.threaded.get, num_workers=threads):
                with TqdmCallback(desc="ingest", mininterval=1):
                    lazy.store(sink, lock=False)
                if isinstance(sink, NonFiniteCounter) and sink.non_finite:
                    raise InputError(f"{src}: {sink.non_finite:,} voxels are NaN or infinite, which n2vpipe "
                                     "refuses (training and normalisation need finite values); replace them "
                                     "(e.g. with the background level) and ingest again")
                levels = write_pyramid(partial, pyramid_levels, codec)
    log.info("wrote %s (%d level(s), chunks %s)", dst, levels, chunks)
    return meta
