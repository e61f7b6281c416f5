"""Checking a TIFF from its headers before any of its pixels are read.

A damaged, forged or unsupported file fails here with one :class:`~n2vpipe.errors.InputError`
naming it: cut short anywhere, planes or strips/tiles missing or outside the file, metadata
(ImageJ, OME-XML) that claims other planes than the file holds, more voxel bytes claimed
than the file can hold, a voxel type outside :data:`DTYPE_POLICY`. Nothing here allocates
more than the headers take.
"""

from __future__ import annotations

import contextlib
import logging
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import tifffile

from n2vpipe.errors import InputError

DTYPE_POLICY = (
    "n2vpipe ingests voxels of type bool, int8/16/32/64, uint8/16/32/64 and float16/32/64; complex and "
    "every other type are refused at ingest (a complex image's imaginary part would be lost). Float "
    "voxels must be finite: NaN or Inf anywhere refuses the file, with their count. RGB or other "
    "multi-sample pixels (SamplesPerPixel > 1, interleaved or planar) become channels."
)
"""The pixel types ingest accepts, in a sentence the docs can cite."""
ACCEPTED_DTYPES = frozenset(np.dtype(name) for name in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
    "float64"))
MAX_COMPRESSION_RATIO = 100_000
"""A compressed TIFF may claim at most this many times its file size in voxel bytes: more than any real
microscopy file reaches (zstd packs an all-zero volume ~6600:1, deflate at most ~1000:1), so a forged
header cannot make ingest allocate more than this many times the file's size."""
_TIFFFILE_COMPLAINT = re.compile(r"invalid|corrupt|truncat|missing|incorrect|incomplet|not match|out of range"
                                 r"|failed|raised", re.IGNORECASE)


class _TifffileComplaints(logging.Filter):
    """Takes tifffile's reports of a damaged file (every error; warnings that say invalid, corrupted,
    missing, …) off its logger and keeps them, so that the caller raises them as one :class:`InputError`."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep and drop a complaint; let any other record through."""
        message = record.getMessage()
        if record.levelno >= logging.ERROR or _TIFFFILE_COMPLAINT.search(message):
            self.messages.append(re.sub(r"^<[^>]*>\s*", "", message))
            return False
        return True


@contextlib.contextmanager
def _tifffile_complaints() -> Iterator[list[str]]:
    """Collect what tifffile logs about a damaged file while the block runs (see :class:`_TifffileComplaints`)."""
    logger = logging.getLogger("tifffile")
    complaints = _TifffileComplaints()
    logger.addFilter(complaints)
    try:
        yield complaints.messages
    finally:
        logger.removeFilter(complaints)


def check_dtype(path: Path, dtype: np.dtype) -> None:
    """Raise :class:`InputError` unless ``dtype`` is one :data:`DTYPE_POLICY` accepts."""
    dtype = np.dtype(dtype)
    if dtype.newbyteorder("=") in ACCEPTED_DTYPES:
        return
    if dtype.kind == "c":
        raise InputError(f"{path}: voxels are complex ({dtype}), which n2vpipe refuses (the imaginary part would be "
                         "lost); save the magnitude or the real part as float32 and ingest that file")
    raise InputError(f"{path}: voxel type {dtype} is not supported (n2vpipe takes bool, (u)int8-64 and "
                     "float16/32/64); convert the file to one of those and ingest it again")


def _series_planes(series: tifffile.TiffPageSeries) -> dict[str, int]:
    """Sizes of the series' non-image axes (every axis but Y, X and samples S)."""
    return {axis: size for axis, size in zip(series.axes, series.shape, strict=True) if axis not in "YXS"}


def _check_imagej_counts(path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> None:
    """The ImageJ metadata's images/slices/channels/frames against the series tifffile built."""
    imagej = tif.imagej_metadata
    if imagej is None:
        return
    claimed = {key: int(imagej.get(key, 1)) for key in ("images", "slices", "channels", "frames")}
    planes = _series_planes(series)
    samples = dict(zip(series.axes, series.shape, strict=True)).get("S", 1)
    found = {"slices": planes.get("Z", 1), "channels": planes.get("C", 1), "frames": planes.get("T", 1)}
    if "C" not in planes and claimed["channels"] == samples:  # RGB, or samples that Bio-Formats calls channels
        found["channels"] = samples
    images = int(np.prod(list(planes.values()), dtype=np.int64))
    images_match = claimed["images"] in (1, images, images * samples)
    if series.kind != "imagej" or any(found[key] != claimed[key] for key in found) or not images_match:
        raise InputError(f"{path}: ImageJ metadata claims {claimed['images']} images ({claimed['slices']} slices, "
                         f"{claimed['channels']} channels, {claimed['frames']} frames) but the file holds a "
                         f"{series.axes} series of shape {series.shape}: it is cut short or damaged; copy or "
                         "export it again")


def _check_ome_counts(path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> None:
    """The OME-XML SizeZ/SizeC/SizeT of the first image against the series tifffile built."""
    if not (tif.is_ome and tif.ome_metadata):
        return
    root = ElementTree.fromstring(tif.ome_metadata)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return
    claimed = {axis: int(pixels.attrib.get(f"Size{axis}", 1)) for axis in "ZCT"}
    planes = int(np.prod([s for a, s in zip(series.axes, series.shape, strict=True) if a not in "YX"], dtype=np.int64))
    if series.kind != "ome" or planes != claimed["Z"] * claimed["C"] * claimed["T"]:
        raise InputError(f"{path}: OME-XML claims SizeZ={claimed['Z']} SizeC={claimed['C']} SizeT={claimed['T']} "
                         f"but the file holds a {series.axes} series of shape {series.shape}: it is cut short or "
                         "damaged; copy or export it again")


def _stored_bytes(samples: int, bits_per_sample: int) -> int:
    """Bytes that ``samples`` values of ``bits_per_sample`` bits take uncompressed (bool images: 1 bit each)."""
    return -(-samples * bits_per_sample // 8)


def _files_on_disk(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> dict[str, int]:
    """Size of each file the series' planes are in: ``tif`` alone, or the files of a multi-file OME series."""
    if not series.is_multifile:
        return {tif.filehandle.path: tif.filehandle.size}
    return {page.parent.filehandle.path: page.parent.filehandle.size for page in series.pages if page is not None}


def _check_claimed_size(path: Path, series: tifffile.TiffPageSeries, files: Mapping[str, int]) -> None:
    """The bytes the header's shape x dtype claims against the size of the ``files`` holding them
    (uncompressed: at most their size; compressed: at most :data:`MAX_COMPRESSION_RATIO` times it)."""
    claimed = _stored_bytes(int(np.prod(series.shape, dtype=object)), series.keyframe.bitspersample)
    compressed = series.keyframe.compression != 1
    on_disk = sum(files.values())
    if claimed > on_disk * (MAX_COMPRESSION_RATIO if compressed else 1):
        holders = "the file holds" if len(files) == 1 else f"its files ({', '.join(map(str, files))}) hold"
        raise InputError(f"{path}: header claims {series.shape} {series.dtype} voxels ({claimed:,} bytes) but "
                         f"{holders} {on_disk:,} bytes{' (compressed)' if compressed else ''}: it is cut short or "
                         "its header is damaged; copy or export it again")


def _check_page_data(path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> None:
    """Every plane of the series present, and each of its strips or tiles non-empty and inside the file
    that holds it (``tif``, or another file of a multi-file OME series).

    tifffile reads a missing strip (offset or byte count 0) as zeros, so this is what keeps a damaged
    file from being ingested as zero-filled chunks.
    """
    file_size = tif.filehandle.size
    if series.dataoffset is not None:
        if series.dataoffset <= 0 or series.dataoffset + series.nbytes > file_size:
            raise InputError(f"{path}: image data ({series.nbytes:,} bytes from offset {series.dataoffset}) run past "
                             f"the end of the file ({file_size:,} bytes): it is cut short; copy or export it again")
        return
    keyframe = series.keyframe
    planes = series.size // keyframe.size
    present = [page for page in series.pages if page is not None]
    if len(present) != planes:
        raise InputError(f"{path}: holds {len(present)} of the {planes} image planes its header describes: it is cut "
                         "short or damaged; copy or export it again")
    chunks = int(np.prod(keyframe.chunked))
    for page in present:
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        holder = page.parent.filehandle
        problem = None
        if len(offsets) != chunks or len(counts) != chunks:
            problem = f"{len(offsets)} strip/tile offsets and {len(counts)} byte counts where {chunks} belong"
        elif (offsets <= 0).any() or (counts <= 0).any():
            problem = "strips/tiles with offset or byte count 0 (missing data)"
        elif (offsets + counts > holder.size).any():
            problem = f"strips/tiles past the end of the file ({holder.size:,} bytes)"
        if problem:
            where = "" if page.parent is tif else f" (in {holder.path})"
            raise InputError(f"{path}: image plane {page.index}{where} has {problem}: the file is cut short or "
                             "damaged; copy or export it again")


def check_tiff_series(path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> None:
    """Check, from the headers alone, that ``series`` of ``tif`` can be ingested whole.

    The voxel type against :data:`DTYPE_POLICY`; the bytes its shape claims against the file's size;
    ImageJ and OME-XML plane counts against the series; every plane present, every strip or tile
    non-empty and inside the file. Raises :class:`InputError` naming ``path`` and the problem.
    """
    check_dtype(path, series.dtype)
    _check_claimed_size(path, series, _files_on_disk(tif, series))
    _check_imagej_counts(path, tif, series)
    _check_ome_counts(path, tif, series)
    _check_page_data(path, tif, series)


def _reported(complaints: Sequence[str]) -> str:
    """What tifffile logged about a damaged file, as the tail of an error message (nothing if it logged nothing)."""
    return f" (tifffile reports: {'; '.join(dict.fromkeys(complaints))})" if complaints else ""


def open_checked_tiff(path: Path, stack: contextlib.ExitStack) -> tuple[tifffile.TiffFile, tifffile.TiffPageSeries]:
    """Open the TIFF ``path`` (closed with ``stack``) and return it with its first series, checked whole.

    Anything tifffile reports as invalid or corrupted while reading the headers (the IFD chain walked
    to its end) fails the file, and so does whatever :func:`check_tiff_series` finds. Raises
    :class:`InputError` naming ``path``.
    """
    try:
        with _tifffile_complaints() as complaints:
            tif = stack.enter_context(tifffile.TiffFile(path))
            series = tif.series
            len(tif.pages)
            if series:
                check_tiff_series(path, tif, series[0])
    except (tifffile.TiffFileError, OSError, ElementTree.ParseError, struct.error, IndexError, RuntimeError) as err:
        # tifffile's header parsing raises IndexError for a page past the end of the IFD chain and
        # RuntimeError ("incompatible keyframe") for a page whose strip/tile tables do not fit the first
        raise InputError(f"{path}: not a readable TIFF ({err}): it is cut short, damaged or no TIFF at all; copy "
                         f"or export it again{_reported(complaints)}") from err
    except InputError as err:
        if not complaints:
            raise
        raise InputError(f"{err}{_reported(complaints)}") from err
    if complaints:
        raise InputError(f"{path}: damaged TIFF: it is cut short or corrupted; copy or export it again"
                         f"{_reported(complaints)}")
    if not series:
        raise InputError(f"{path}: TIFF holds no image series")
    return tif, series[0]


def check_plane_files(folder: Path, files: Sequence[Path], stack: contextlib.ExitStack) -> tifffile.TiffFile:
    """Check every plane file of ``folder`` from its headers (see :func:`open_checked_tiff`), each with
    the first one's shape and voxel type; return the first file opened (closed with ``stack``)."""
    first, reference = open_checked_tiff(files[0], stack)
    for file in files[1:]:
        with contextlib.ExitStack() as each:
            _, series = open_checked_tiff(file, each)
            if series.shape != reference.shape or series.dtype != reference.dtype:
                raise InputError(f"{file}: plane of shape {series.shape} {series.dtype} in a folder whose first plane "
                                 f"({files[0].name}) is {reference.shape} {reference.dtype}: every plane of "
                                 f"{folder} must match; replace or remove that file")
    return first
