"""Ingest: TIFF-family input → chunked, compressed OME-Zarr, never the whole volume in RAM."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import dask
import dask.array as da
from tqdm.dask import TqdmCallback

from n2vpipe.io import ImageMeta, atomic_output, blosc_compressor, create_ome_zarr, open_tiff_lazy, write_pyramid

log = logging.getLogger(__name__)


def chunk_shape(meta: ImageMeta, spatial_chunks: Mapping[str, int]) -> tuple[int, ...]:
    """Zarr chunk shape for ``meta``: one channel and time point per chunk, spatial sizes from config."""
    return tuple(min(spatial_chunks.get(a, 1), s) if a in "zyx" else 1 for a, s in zip(meta.axes, meta.shape))


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

    The source is read through tifffile's zarr store in slabs of whole planes
    (as many as one output chunk is deep), split into output chunks and written
    by dask with ``threads`` workers; dask chunks equal zarr chunks, so no two
    tasks write the same chunk. ``dst`` appears only once complete.
    """
    codec = blosc_compressor(compressor, compression_level)
    with open_tiff_lazy(src) as (source, meta, permutation):
        chunks = chunk_shape(meta, spatial_chunks)
        slab = tuple(chunks[i] if a in "tcz" else meta.shape[i] for i, a in enumerate(meta.axes))
        source_slab = tuple(slab[permutation.index(i)] for i in range(len(permutation)))
        lazy = da.from_zarr(source, chunks=source_slab).transpose(permutation).rechunk(chunks)
        log.info("ingest %s: axes %s shape %s dtype %s voxel %s %s", src, meta.axes, meta.shape, meta.dtype,
                 meta.scale, meta.unit)
        with atomic_output(dst) as partial:
            target = create_ome_zarr(partial, meta, chunks, codec, name=Path(dst).parent.name,
                                     extra_attrs={"source": str(src)})
            with dask.config.set(scheduler="threads", num_workers=threads), TqdmCallback(desc="ingest", mininterval=1):
                lazy.store(target, lock=False)
            levels = write_pyramid(partial, pyramid_levels, codec)
    log.info("wrote %s (%d level(s), chunks %s)", dst, levels, chunks)
    return meta
