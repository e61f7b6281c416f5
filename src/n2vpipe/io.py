"""Reading TIFF-family inputs lazily and writing OME-Zarr (NGFF 0.4) outputs atomically.

Every array this module hands out is in one canonical axis order, a subsequence
of ``tczyx``. Outputs are NGFF 0.4 (Zarr v2, ``/`` separated chunks), which napari
(napari-ome-zarr), Fiji (n5-zarr / MoBIE) and ome-zarr-py all open.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numcodecs
import numpy as np
import tifffile
import zarr

from n2vpipe.errors import InputError, reporting_disk_full
from n2vpipe.geometry import z_is_coarse
from n2vpipe.layout import plane_files
from n2vpipe.tiff_checks import check_plane_files, open_checked_tiff

log = logging.getLogger(__name__)

CANONICAL_AXES = "tczyx"
SPATIAL_AXES = "zyx"
NGFF_VERSION = "0.4"
_UNIT_ALIASES = {
    "micron": "micrometer",
    "um": "micrometer",
    "µm": "micrometer",
    "\\u00B5m": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "pixel": "",
    "": "",
}


@dataclass(frozen=True)
class ImageMeta:
    """Axes, physical voxel size and unit of an image in canonical axis order."""

    axes: str
    shape: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    unit: str = "micrometer"

    @property
    def spatial_axes(self) -> str:
        """The spatial axes present, e.g. ``"zyx"`` or ``"yx"``."""
        return "".join(a for a in self.axes if a in SPATIAL_AXES)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape along the spatial axes only."""
        return tuple(s for a, s in zip(self.axes, self.shape, strict=True) if a in SPATIAL_AXES)

    @property
    def spatial_scale(self) -> tuple[float, ...]:
        """Voxel size along the spatial axes only."""
        return tuple(s for a, s in zip(self.axes, self.scale, strict=True) if a in SPATIAL_AXES)

    def size(self, axis: str) -> int:
        """Length along ``axis``, 1 when the axis is absent."""
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    def key(self, t: int, c: int, start: Sequence[int], stop: Sequence[int]) -> tuple[Any, ...]:
        """Index into a canonical array: one time point, one channel, a spatial box ``[start, stop)``."""
        spatial = iter(zip(start, stop, strict=True))
        return tuple(t if a == "t" else c if a == "c" else slice(*next(spatial)) for a in self.axes)

    def spatial_chunks(self, chunks: Sequence[int]) -> tuple[int, ...]:
        """The spatial entries of a chunk shape given in canonical order."""
        return tuple(c for a, c in zip(self.axes, chunks, strict=True) if a in SPATIAL_AXES)


def canonical_axes(tiff_axes: str) -> tuple[str, tuple[int, ...]]:
    """Map tifffile's axis letters to canonical ``tczyx`` order.

    Returns the canonical axes and the permutation that brings the source array
    into that order. Unknown stack letters (``I``, ``Q``) become ``z`` when the
    file has no explicit Z; samples (``S``) become channels, interleaved (``YXS``)
    or planar (``SYX``).
    """
    letters = list(tiff_axes.upper())
    if "Z" not in letters:
        for unknown in ("I", "Q"):
            if unknown in letters:
                letters[letters.index(unknown)] = "Z"
                break
    if "C" not in letters and "S" in letters:
        letters[letters.index("S")] = "C"
    mapped = "".join(letters).lower()
    unsupported = [a for a in mapped if a not in CANONICAL_AXES]
    if unsupported or len(set(mapped)) != len(mapped) or not {"y", "x"} <= set(mapped):
        raise ValueError(f"axes {tiff_axes!r} cannot be mapped to a subset of TCZYX")
    axes = "".join(a for a in CANONICAL_AXES if a in mapped)
    return axes, tuple(mapped.index(a) for a in axes)


def _normalise_unit(unit: str | None) -> str:
    """Map TIFF unit spellings to NGFF unit names (micrometer when unknown)."""
    if unit is None:
        return "micrometer"
    return _UNIT_ALIASES.get(unit.strip(), unit.strip()) or "micrometer"


def _ome_physical_sizes(tif: tifffile.TiffFile) -> tuple[dict[str, float], str | None]:
    """PhysicalSize{X,Y,Z} and the X unit from the OME-XML of ``tif``."""
    root = ElementTree.fromstring(tif.ome_metadata)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return {}, None
    sizes = {
        axis: float(pixels.attrib[f"PhysicalSize{axis.upper()}"])
        for axis in SPATIAL_AXES
        if f"PhysicalSize{axis.upper()}" in pixels.attrib
    }
    return sizes, pixels.attrib.get("PhysicalSizeXUnit")


def _tag_resolution(tif: tifffile.TiffFile) -> dict[str, float]:
    """Pixel size in Y and X from the TIFF resolution tags (1 / pixels-per-unit)."""
    tags = tif.pages.first.tags
    sizes: dict[str, float] = {}
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        if tag in tags:
            num, den = tags[tag].value
            if num > 0 and den > 0 and num != den:
                sizes[axis] = den / num
    return sizes


def tiff_voxel_size(tif: tifffile.TiffFile) -> tuple[dict[str, float], str]:
    """Voxel sizes per spatial axis and their unit, from OME-XML or ImageJ metadata."""
    if tif.is_ome and tif.ome_metadata:
        sizes, unit = _ome_physical_sizes(tif)
        if sizes:
            return sizes, _normalise_unit(unit)
    sizes = _tag_resolution(tif)
    imagej = tif.imagej_metadata or {}
    if "spacing" in imagej:
        sizes["z"] = float(imagej["spacing"])
    return sizes, _normalise_unit(imagej.get("unit"))


class ContiguousTiffArray:
    """Read-only array over an uncompressed, contiguous TIFF series, read by byte ranges.

    A region costs one read per plane of the full-width rows it spans, into one
    buffer of those rows, and nothing is kept between reads: the chunks beside
    it re-read the same rows from the operating system's page cache, so memory
    stays a few chunks whatever the plane width. (tifffile's zarr store hands
    out whole strips, and most uncompressed files hold a plane per strip.)
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], file_dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.file_dtype = Path(path), offset, tuple(shape), file_dtype
        self.dtype = file_dtype.newbyteorder("=")
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """The region selected by one slice (step 1) per axis, as dask asks for it."""
        if not isinstance(key, tuple) or len(key) != self.ndim or not all(isinstance(k, slice) for k in key):
            raise TypeError(f"{type(self).__name__} takes one slice per axis, got {key!r}")
        ranges = [range(*k.indices(n)) for k, n in zip(key, self.shape, strict=True)]
        if any(r.step != 1 for r in ranges):
            raise TypeError(f"{type(self).__name__} reads contiguous slices only, got {key!r}")
        out = np.empty([len(r) for r in ranges], dtype=self.dtype)
        rows, columns = ranges[-2], ranges[-1]
        width = self.shape[-1]
        plane_size = self.shape[-2] * width
        if out.size == 0:
            return out
        full_rows = np.empty((len(rows), width), dtype=self.file_dtype)
        with open(self.path, "rb", buffering=0) as handle:
            for index in itertools.product(*(range(len(r)) for r in ranges[:-2])):
                page = int(np.ravel_multi_index([r[i] for r, i in zip(ranges[:-2], index, strict=True)],
                                                self.shape[:-2])) if index else 0
                handle.seek(self.offset + (page * plane_size + rows.start * width) * self.file_dtype.itemsize)
                if handle.readinto(full_rows) != full_rows.nbytes:
                    raise InputError(f"{self.path}: file ends before the image data does (truncated?)")
                out[index] = full_rows[:, columns.start:columns.stop]
        return out


def _contiguous_source(path: Path, tif: tifffile.TiffFile) -> ContiguousTiffArray | None:
    """A byte-range reader for the first series when it is stored uncompressed and contiguous."""
    series = tif.series[0]
    if series.dataoffset is None or not series.axes.upper().endswith("YX"):
        return None
    file_dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
    return ContiguousTiffArray(path, int(series.dataoffset), tuple(series.shape), file_dtype)


@contextlib.contextmanager
def open_tiff_lazy(path: Path) -> Iterator[tuple[zarr.Array | ContiguousTiffArray, ImageMeta, tuple[int, ...]]]:
    """Open a TIFF, OME-TIFF, ImageJ hyperstack or folder of plane TIFFs without reading its pixels.

    The headers are checked first (:func:`open_checked_tiff`, :func:`check_plane_files`): a damaged
    or unsupported file fails here, before any large allocation. Yields the source as a read-only
    array (in the file's own axis order): a :class:`ContiguousTiffArray` for uncompressed contiguous
    files, tifffile's zarr store otherwise; its metadata in canonical order; and the permutation to
    canonical order. Raises :class:`InputError` naming the file when it cannot be used.
    """
    path = Path(path)
    with contextlib.ExitStack() as stack:
        if path.is_dir():
            files = plane_files(path)
            if not files:
                raise InputError(f"{path}: folder holds no .tif/.tiff plane files")
            first = check_plane_files(path, files, stack)
            sizes, unit = tiff_voxel_size(first)
            tiff_axes = "Z" + first.series[0].axes
            contiguous = None
            store = tifffile.TiffSequence(files, pattern=None).aszarr()
        else:
            tif, series = open_checked_tiff(path, stack)
            sizes, unit = tiff_voxel_size(tif)
            tiff_axes = series.axes
            if len(tif.series) > 1:
                log.warning("%s holds %d image series: only series 0 (%s %s) is ingested; left out: %s", path,
                            len(tif.series), series.axes, series.shape,
                            "; ".join(f"series {i} ({s.axes} {s.shape})" for i, s in enumerate(tif.series) if i))
            contiguous = _contiguous_source(path, tif)
            store = series.aszarr()
        stack.callback(store.close)
        source = contiguous if contiguous is not None else zarr.open_array(store, mode="r")
        try:
            axes, permutation = canonical_axes(tiff_axes)
        except ValueError as err:
            raise InputError(f"{path}: {err}") from err
        if len(source.shape) != len(tiff_axes):
            raise InputError(f"{path}: series has shape {source.shape} but axes {tiff_axes!r}")
        shape = tuple(source.shape[i] for i in permutation)
        scale = tuple(sizes.get(a, 1.0) for a in axes)
        yield source, ImageMeta(axes, shape, str(source.dtype), scale, unit), permutation


def configure_zarr(threads: int) -> None:
    """Zarr settings for a job on ``threads`` cores; call it before the job's first zarr I/O.

    Zarr encodes and decodes chunks in its own thread pool, by default of the
    node's cores + 4 whatever the job was given, and each of those threads keeps
    its own malloc heap: the pool gets ``threads`` threads (from the first zarr
    I/O on, the pool is fixed for the process). Chunks are written without first
    checking whether they hold only the fill value: a full pass over each chunk
    that microscopy data almost never passes.
    """
    zarr.config.set({"threading.max_workers": max(1, threads), "array.write_empty_chunks": True})


def blosc_compressor(name: str, level: int) -> numcodecs.Blosc:
    """Blosc codec with the given inner compressor, bit-shuffled (good for microscopy)."""
    return numcodecs.Blosc(cname=name, clevel=level, shuffle=numcodecs.Blosc.BITSHUFFLE)


def ngff_multiscales(meta: ImageMeta, level_scales: Sequence[Sequence[float]], name: str) -> list[dict[str, Any]]:
    """The NGFF 0.4 ``multiscales`` attribute for the given per-level voxel sizes."""
    axes = []
    for axis in meta.axes:
        if axis == "c":
            axes.append({"name": "c", "type": "channel"})
        elif axis == "t":
            axes.append({"name": "t", "type": "time"})
        else:
            axes.append({"name": axis, "type": "space", "unit": meta.unit})
    datasets = [
        {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}]}
        for level, scale in enumerate(level_scales)
    ]
    return [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets}]


def create_ome_zarr(
    path: Path,
    meta: ImageMeta,
    chunks: Sequence[int],
    compressor: numcodecs.abc.Codec,
    name: str,
    extra_attrs: Mapping[str, Any] | None = None,
) -> zarr.Array:
    """Create an OME-Zarr group at ``path`` with an empty level-0 array and NGFF metadata."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    array = group.create_array(
        "0",
        shape=meta.shape,
        chunks=tuple(min(c, s) for c, s in zip(chunks, meta.shape, strict=True)),
        dtype=meta.dtype,
        compressors=compressor,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    group.attrs["multiscales"] = ngff_multiscales(meta, [meta.scale], name)
    if extra_attrs:
        group.attrs["n2vpipe"] = dict(extra_attrs)
    return array


def _multiscale(group: zarr.Group) -> dict[str, Any]:
    """The first ``multiscales`` entry: NGFF 0.4 keeps it at the top of the attributes, 0.5 under ``ome``."""
    attrs = group.attrs.asdict()
    return (attrs.get("ome", attrs))["multiscales"][0]


def open_ome_zarr(path: Path, level: int = 0) -> tuple[zarr.Array, ImageMeta]:
    """Open one level of an OME-Zarr image (NGFF 0.4 or 0.5) without reading its data.

    Raises :class:`InputError` naming the folder when it is not an image n2vpipe can use.
    """
    try:
        group = zarr.open_group(str(path), mode="r")
        multiscale = _multiscale(group)
    except (FileNotFoundError, KeyError, IndexError, zarr.errors.GroupNotFoundError) as err:
        raise InputError(f"{path}: not an OME-Zarr image ({err!r})") from err
    axes = "".join(a["name"].lower() for a in multiscale["axes"])
    if axes != "".join(a for a in CANONICAL_AXES if a in axes) or not axes.endswith("yx"):
        raise InputError(f"{path}: axes {axes!r} are not a subset of t, c, z, y, x in that order")
    dataset = multiscale["datasets"][level]
    array = group[dataset["path"]]
    scale = next(t["scale"] for t in dataset["coordinateTransformations"] if t["type"] == "scale")
    unit = next((a["unit"] for a in multiscale["axes"] if "unit" in a), "micrometer")
    return array, ImageMeta(axes, tuple(array.shape), str(array.dtype), tuple(scale), unit)


def _chunk_key(array: zarr.Array, coords: Sequence[int]) -> str:
    """The store key of the chunk at grid position ``coords`` (e.g. ``0/3/1/2``)."""
    metadata = array.metadata
    if metadata.zarr_format == 2:
        separator = metadata.dimension_separator or "."
        return separator.join(map(str, coords))
    return metadata.chunk_key_encoding.encode_chunk_key(tuple(coords))


def _undecodable_chunks(array: zarr.Array, key: tuple[Any, ...]) -> list[str]:
    """Keys of the chunks under ``key`` (ints and step-1 slices) that fail to decode, each read alone."""
    ranges = []
    # A key may index fewer axes than the array has (as zarr allows): the rest are then whole.
    for index, size, chunk in zip(key, array.shape, array.chunks, strict=False):
        start, stop = (index, index + 1) if isinstance(index, (int, np.integer)) else index.indices(size)[:2]
        ranges.append(range(start // chunk, -(-stop // chunk)))
    bad = []
    for coords in itertools.product(*ranges):
        try:
            array.blocks[coords]
        except (RuntimeError, ValueError):
            bad.append(_chunk_key(array, coords))
    return bad


def read_region(array: zarr.Array, key: tuple[Any, ...]) -> np.ndarray:
    """``array[key]`` as numpy; a chunk that cannot be decoded raises :class:`InputError` naming the
    store (the acquisition's OME-Zarr), the array inside it and the chunk key(s)."""
    try:
        return np.asarray(array[key])
    except (RuntimeError, ValueError) as err:
        chunks = _undecodable_chunks(array, key) or ["(none alone: the region as a whole)"]
        root = str(array.store_path).removeprefix("file://").removesuffix(f"/{array.path}")
        raise InputError(f"{root}: array {array.path!r}: chunk {', '.join(chunks)} cannot be decoded ({err}); "
                         "the store is damaged: restore it, or delete it so that it is written again") from err


def sample_voxels(array: zarr.Array, meta: ImageMeta, channel: int, rng: np.random.Generator,
                  max_chunks: int = 64, samples_per_chunk: int = 4096) -> np.ndarray:
    """Voxel values of one channel sampled over the whole volume: ``max_chunks`` random chunks, a random
    subset of each."""
    spatial_chunks = meta.spatial_chunks(array.chunks)
    grid = [-(-s // c) for s, c in zip(meta.spatial_shape, spatial_chunks, strict=True)]
    values = []
    for _ in range(max_chunks):
        t = int(rng.integers(meta.size("t")))
        start = tuple(int(rng.integers(g)) * c for g, c in zip(grid, spatial_chunks, strict=True))
        stop = tuple(min(s + c, n) for s, c, n in zip(start, spatial_chunks, meta.spatial_shape, strict=True))
        block = read_region(array, meta.key(t, channel, start, stop)).ravel()
        values.append(rng.choice(block, size=min(samples_per_chunk, block.size), replace=False))
    return np.concatenate(values).astype(np.float64)


def partial_path(final: Path) -> Path:
    """Where an output is built before it is renamed into place."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


def publish(partial: Path, final: Path) -> None:
    """Atomically move a completed ``partial`` output to ``final``."""
    final = Path(final)
    if final.is_dir():
        shutil.rmtree(final)
    elif final.exists():
        final.unlink()
    os.replace(partial, final)


@contextlib.contextmanager
def atomic_output(final: Path, keep_partial_on_error: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success.

    With ``keep_partial_on_error`` a failed or killed run leaves the partial
    output for the next run to resume from; otherwise it is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(final)
    try:
        yield partial
    except BaseException:
        if not keep_partial_on_error:
            remove_path(partial)
        raise
    publish(partial, final)


def remove_path(path: Path) -> None:
    """Remove a file or directory tree if it exists."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed into place when complete.

    A failed write (a full disk: :class:`DiskFullError` naming ``path``) leaves neither the
    temporary file nor a partial ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with reporting_disk_full(path), open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def read_planes_zcyx(array: zarr.Array, meta: ImageMeta) -> Iterator[np.ndarray]:
    """Yield YX planes in ImageJ's TZCYX order, reading one plane at a time."""
    index = {a: i for i, a in enumerate(meta.axes)}
    for t in range(meta.size("t")):
        for z in range(meta.size("z")):
            for c in range(meta.size("c")):
                key: list[Any] = [slice(None)] * len(meta.axes)
                for axis, value in (("t", t), ("z", z), ("c", c)):
                    if axis in index:
                        key[index[axis]] = value
                yield read_region(array, tuple(key))


def export_tiff(array: zarr.Array, meta: ImageMeta, dst: Path) -> None:
    """Stream ``array`` into an ImageJ hyperstack TIFF that Fiji opens with its voxel size."""
    imagej_axes = "".join(a for a in "tzcyx" if a in meta.axes).upper()
    imagej_shape = tuple(meta.size(a.lower()) for a in imagej_axes)
    scale = dict(zip(meta.axes, meta.scale, strict=True))
    metadata: dict[str, Any] = {"axes": imagej_axes, "unit": "um" if meta.unit == "micrometer" else meta.unit}
    if "z" in scale:
        metadata["spacing"] = scale["z"]
    with atomic_output(dst) as partial, reporting_disk_full(dst):
        tifffile.imwrite(
            partial,
            read_planes_zcyx(array, meta),
            shape=imagej_shape,
            dtype=array.dtype,
            imagej=True,
            resolution=(1.0 / scale["x"], 1.0 / scale["y"]),
            metadata=metadata,
        )


def pyramid_factors(meta: ImageMeta) -> tuple[int, ...]:
    """Per-axis downsampling factors for the next pyramid level.

    Y and X halve; Z halves only while its voxels are not coarse
    (:func:`~n2vpipe.geometry.z_is_coarse`: strongly anisotropic stacks keep their Z resolution).
    """
    scale = dict(zip(meta.axes, meta.scale, strict=True))
    factors = []
    for axis in meta.axes:
        if axis in "yx":
            factors.append(2)
        elif axis == "z":
            factors.append(1 if z_is_coarse(scale["z"], scale["y"]) or meta.size("z") < 2 else 2)
        else:
            factors.append(1)
    return tuple(factors)


def write_pyramid(path: Path, levels: int, compressor: numcodecs.abc.Codec, min_size: int = 32) -> int:
    """Add mean-downsampled levels 1..``levels``-1 to the OME-Zarr at ``path``.

    Each level is computed from the previous one with dask, chunked like level 0
    so that dask chunks equal zarr chunks; integer (and bool) levels are rounded to
    the nearest value, not truncated. Stops early once Y or X would fall below
    ``min_size``. Returns the number of levels present afterwards.
    """
    import dask.array as da

    group = zarr.open_group(str(path), mode="r+")
    multiscale = group.attrs["multiscales"][0]
    base, meta = open_ome_zarr(path, 0)
    scales = [list(meta.scale)]
    current = meta
    for level in range(1, levels):
        factors = pyramid_factors(current)
        shape = tuple(s // f for s, f in zip(current.shape, factors, strict=True))
        if min(s for a, s in zip(current.axes, shape, strict=True) if a in "yx") < min_size:
            break
        previous = da.from_zarr(group[str(level - 1)])
        down = da.coarsen(np.mean, previous, dict(enumerate(factors)), trim_excess=True)
        target = group.create_array(
            str(level),
            shape=shape,
            chunks=tuple(min(c, s) for c, s in zip(base.chunks, shape, strict=True)),
            dtype=base.dtype,
            compressors=compressor,
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        if np.dtype(base.dtype).kind in "iub":  # integer means round to the nearest value, not down
            down = da.round(down)
        down.astype(base.dtype).rechunk(target.chunks).store(target, lock=False)
        scales.append([s * f for s, f in zip(scales[-1], factors, strict=True)])
        current = ImageMeta(current.axes, shape, current.dtype, tuple(scales[-1]), current.unit)
    multiscale["datasets"] = ngff_multiscales(meta, scales, multiscale.get("name", ""))[0]["datasets"]
    group.attrs["multiscales"] = [multiscale]
    return len(scales)
