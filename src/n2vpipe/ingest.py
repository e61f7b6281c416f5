"""Ingest: TIFF-family input → chunked, compressed OME-Zarr, never the whole volume in RAM."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from tqdm.dask import TqdmCallback

from n2vpipe.io import ImageMeta, atomic_output, blosc_compressor, create_ome_zarr, open_tiff_lazy, write_pyramid

log = logging.getLogger(__name__)


def chunk_shape(meta: ImageMeta, spatial_chunks: Mapping[str, int]) -> tuple[int, ...]:
    """Zarr chunk shape for ``meta``: one channel and time point per chunk, spatial sizes from config."""
    return tuple(min(spatial_chunks.get(a, 1), s) if a in "zyx" else 1 for a, s in zip(meta.axes, meta.shape))


def source_band(source_shape: tuple[int, ...], source_chunks: tuple[int, ...], meta: ImageMeta,
                chunks: tuple[int, ...], permutation: tuple[int, ...]) -> tuple[int, ...]:
    """Read unit in the source's own axis order: a band of full-width rows, one output chunk deep.

    Rows are rounded up to the source's own strip height, so no strip is decoded
    twice; memory per read is one band, whatever the number of planes or rows.
    """
    canonical = tuple(chunks[i] if a != "x" else meta.shape[i] for i, a in enumerate(meta.axes))
    band = [canonical[permutation.index(i)] for i in range(len(permutation))]
    rows, strip = band[-2], source_chunks[-2]
    band[-2] = min(source_shape[-2], -(-rows // strip) * strip)
    return tuple(band)


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

    The source is read lazily in bands of full-width rows, one output chunk deep
    and tall (see :func:`source_band`), split into output chunks and written by
    dask with ``threads`` workers; dask chunks equal zarr chunks, so no two tasks
    write the same chunk. ``dst`` appears only once complete.
    """
    codec = blosc_compressor(compressor, compression_level)
    with open_tiff_lazy(src) as (source, meta, permutation):
        chunks = chunk_shape(meta, spatial_chunks)
        band = source_band(source.shape, source.chunks, meta, chunks, permutation)
        empty = np.empty((0,) * source.ndim, dtype=source.dtype)
        lazy = da.from_array(source, chunks=band, lock=False, meta=empty).transpose(permutation).rechunk(chunks)
        log.info("ingest %s: axes %s shape %s dtype %s voxel %s %s, read in bands of %s", src, meta.axes, meta.shape,
                 meta.dtype, meta.scale, meta.unit, band)
        with atomic_output(dst) as partial:
            target = create_ome_zarr(partial, meta, chunks, codec, name=Path(dst).parent.name,
                                     extra_attrs={"source": str(src)})
            with dask.config.set(scheduler="threads", num_workers=threads), TqdmCallback(desc="ingest", mininterval=1):
                lazy.store(target, lock=False)
            levels = write_pyramid(partial, pyramid_levels, codec)
    log.info("wrote %s (%d level(s), chunks %s)", dst, levels, chunks)
    return meta
