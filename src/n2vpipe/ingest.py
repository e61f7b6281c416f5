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
    return tuple(min(spatial_chunks.get(a, 1), s) if a in "zyx" else 1 for a, s in zip(meta.axes, meta.shape))


class RowBandReader:
    """Chunk-sized reads from a TIFF source through a cache of one band of full-width rows.

    TIFF data lies in full-width rows (strips, or whole planes when uncompressed),
    so reading one chunk costs the band of full-width rows around it, rounded out
    to whole strips. The chunks of one band share that read: the band stays cached
    until a chunk of another band is asked for. Memory is one band (plus the one a
    reader may still be copying from), whatever the volume size.
    """

    def __init__(self, source: zarr.Array | ContiguousTiffArray, strip_rows: int) -> None:
        self.source, self.strip_rows = source, strip_rows
        self.shape, self.dtype, self.ndim = tuple(source.shape), np.dtype(source.dtype), len(source.shape)
        self._lock = threading.Lock()
        self._band_key: tuple[slice, ...] | None = None
        self._band: np.ndarray | None = None

    def band_key(self, key: tuple[slice, ...]) -> tuple[slice, ...]:
        """The band of full-width rows, whole strips, that holds the region ``key``."""
        rows = key[-2]
        start = rows.start // self.strip_rows * self.strip_rows
        stop = min(self.shape[-2], -(-rows.stop // self.strip_rows) * self.strip_rows)
        return (*key[:-2], slice(start, stop), slice(0, self.shape[-1]))

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """A copy of the region ``key`` (one slice per axis), read through the band cache."""
        key = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape))
        band_key = self.band_key(key)
        with self._lock:
            if band_key != self._band_key:
                self._band, self._band_key = None, None
                self._band = np.asarray(self.source[band_key])
                self._band_key = band_key
            band = self._band
        rows = slice(key[-2].start - band_key[-2].start, key[-2].stop - band_key[-2].start)
        return band[(..., rows, key[-1])].copy()


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

    Dask reads the source chunk by chunk, strip-stored files through a
    :class:`RowBandReader` (one band of full-width rows in memory), uncompressed
    contiguous ones by byte range, and writes with ``threads`` workers; dask
    chunks equal zarr chunks, so no two tasks write the same chunk. ``dst``
    appears only once complete.
    """
    configure_zarr(threads)
    codec = blosc_compressor(compressor, compression_level)
    with open_tiff_lazy(src) as (source, meta, permutation):
        chunks = chunk_shape(meta, spatial_chunks)
        reader = source if isinstance(source, ContiguousTiffArray) else RowBandReader(source, source.chunks[-2])
        source_chunks = tuple(chunks[permutation.index(i)] for i in range(len(permutation)))
        empty = np.empty((0,) * source.ndim, dtype=source.dtype)
        lazy = da.from_array(reader, chunks=source_chunks, lock=False, meta=empty).transpose(permutation)
        log.info("ingest %s: axes %s shape %s dtype %s voxel %s %s, read %s", src, meta.axes, meta.shape,
                 meta.dtype, meta.scale, meta.unit,
                 "by byte range" if reader is source else "in bands of full-width rows")
        with atomic_output(dst) as partial:
            target = create_ome_zarr(partial, meta, chunks, codec, name=Path(dst).parent.name,
                                     extra_attrs={"source": str(src)})
            with dask.config.set(scheduler=dask.threaded.get, num_workers=threads):
                with TqdmCallback(desc="ingest", mininterval=1):
                    lazy.store(target, lock=False)
                levels = write_pyramid(partial, pyramid_levels, codec)
    log.info("wrote %s (%d level(s), chunks %s)", dst, levels, chunks)
    return meta
