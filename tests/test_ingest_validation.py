"""Ingest refuses damaged and unsupported TIFF inputs, from their headers, before any work, naming the file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from n2vpipe.errors import InputError
from n2vpipe.ingest import ingest_tiff
from n2vpipe.io import open_ome_zarr, partial_path
from n2vpipe.tiff_checks import DTYPE_POLICY
from synthetic import overwrite_tags, truncate_file, truncated_imagej_stack

CHUNKS = {"z": 4, "y": 32, "x": 32}
STACK = np.arange(10 * 64 * 48, dtype=np.uint16).reshape(10, 64, 48)
LAYOUTS = {
    "imagej": {"imagej": True, "metadata": {"axes": "ZYX"}},
    "imagej-zlib": {"imagej": True, "metadata": {"axes": "ZYX"}, "compression": "zlib"},
    "shaped": {"metadata": {"axes": "ZYX"}},
    "shaped-zlib-strips": {"metadata": {"axes": "ZYX"}, "compression": "zlib", "rowsperstrip": 16},
    "shaped-zstd-tiles": {"metadata": {"axes": "ZYX"}, "compression": "zstd", "tile": (32, 32)},
    "ome": {"ome": True, "metadata": {"axes": "ZYX"}},
    "ome-zlib": {"ome": True, "metadata": {"axes": "ZYX"}, "compression": "zlib"},
}


def assert_refused(src: Path, dst: Path, *fragments: str) -> str:
    """Ingest fails with one line naming ``src`` (and each of ``fragments``); neither ``dst`` nor its partial
    is left behind. Returns the message."""
    with pytest.raises(InputError) as caught:
        ingest_tiff(src, dst, CHUNKS)
    message = str(caught.value)
    assert message.startswith(f"{src}: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not dst.exists() and not partial_path(dst).exists()
    return message


def cut_points(path: Path) -> dict[str, int]:
    """Sizes to cut the file at: in the header, in the first IFD, in the first plane's data, in the middle, in
    the last IFD, and one byte short of the last strip or tile's end."""
    with tifffile.TiffFile(path) as tif:
        first_data = tif.pages.first.dataoffsets[0]
        last = tif.pages[-1]
        last_byte = last.dataoffsets[-1] + last.databytecounts[-1]
    return {"header": 5, "first-ifd": 40, "first-plane": first_data + 100, "middle": path.stat().st_size // 2,
            "last-ifd": last.offset + 20, "last-data": last_byte - 1}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_tiff_cut_short_anywhere_is_refused_naming_the_file(tmp_path: Path, layout: str) -> None:
    """Whatever the layout and wherever the cut (header, IFD chain, image data), ingest fails with one line
    naming the file and leaves nothing; the whole file, for comparison, is ingested exactly."""
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, STACK, **LAYOUTS[layout])
    for where, size in cut_points(whole).items():
        src = tmp_path / f"cut-{where}.tif"
        src.write_bytes(whole.read_bytes()[:size])
        assert_refused(src, tmp_path / f"cut-{where}.ome.zarr")
    ingest_tiff(whole, tmp_path / "whole.ome.zarr", CHUNKS)
    assert np.array_equal(open_ome_zarr(tmp_path / "whole.ome.zarr")[0][:], STACK)


def test_a_truncated_imagej_stack_is_not_published_as_its_first_plane(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The known bug: tifffile logs 'ImageJ series metadata invalid' and falls back to a 2D series of the first
    plane. Now the ImageJ counts are compared with the series, and tifffile's complaint does not reach the log
    as a second error line."""
    src = truncated_imagej_stack(tmp_path / "stack.tif", planes=10, kept=3)
    with caplog.at_level(logging.DEBUG):
        message = assert_refused(src, tmp_path / "stack.ome.zarr", "ImageJ metadata claims 10 images (10 slices",
                                 "cut short")
    assert not [r for r in caplog.records if r.name == "tifffile"], caplog.text
    assert "YX series of shape (64, 48)" in message


FORGED_TABLES = {  # page 3's strip/tile tables, from its (offsets, byte counts), and what the message says
    "zero-bytecount": ("shaped-zlib-strips", lambda o, c: {"StripByteCounts": (c[0], 0, *c[2:])}, "byte count 0"),
    "zero-offset": ("shaped-zlib-strips", lambda o, c: {"StripOffsets": (0, *o[1:])}, "offset or byte count 0"),
    "strip-past-end": ("shaped-zlib-strips", lambda o, c: {"StripOffsets": (*o[:-1], 10**7)}, "past the end"),
    "tile-past-end": ("shaped-zstd-tiles", lambda o, c: {"TileOffsets": (*o[:-1], 10**7)}, "past the end"),
    "missing-strip": ("shaped-zlib-strips", lambda o, c: {"StripOffsets": o[:2], "StripByteCounts": c[:2]},
                      "incompatible keyframe"),
    "uncompressed-past-end": ("uncompressed-pages", lambda o, c: {"StripOffsets": (70_000,)}, "past the end"),
}


@pytest.mark.parametrize("name", FORGED_TABLES)
def test_strips_and_tiles_outside_the_file_or_empty_are_refused_not_read_as_zeros(tmp_path: Path, name: str) -> None:
    """tifffile's zarr store reads a strip with offset or byte count 0 as fill value: such a file would be
    ingested with zero-filled chunks. Page 3's strip/tile tables are forged; every other page is intact."""
    layout, forge, fragment = FORGED_TABLES[name]
    src = tmp_path / f"{name}.tif"
    tifffile.imwrite(src, STACK, **LAYOUTS.get(layout, {"metadata": None}))
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[3]
        tags = forge(page.dataoffsets, page.databytecounts)
    overwrite_tags(src, page=3, **tags)
    assert_refused(src, tmp_path / f"{name}.ome.zarr", fragment, "copy or export it again")


def test_missing_pages_and_forged_plane_counts_are_refused(tmp_path: Path) -> None:
    """ImageJ 'images'/'slices' and OME-XML SizeZ saying more planes than the file holds."""
    imagej = tmp_path / "imagej.tif"
    tifffile.imwrite(imagej, STACK, imagej=True, metadata={"axes": "ZYX"}, compression="zlib")
    with tifffile.TiffFile(imagej) as tif:
        description = tif.pages.first.description
    overwrite_tags(imagej, ImageDescription=description.replace("images=10", "images=12")
                   .replace("slices=10", "slices=12"))
    assert_refused(imagej, tmp_path / "imagej.ome.zarr", "cut short or damaged")
    ome = tmp_path / "acq.ome.tif"
    tifffile.imwrite(ome, STACK, ome=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(ome) as tif:
        xml = tif.ome_metadata
    overwrite_tags(ome, ImageDescription=xml.replace('SizeZ="10"', 'SizeZ="12"'))
    assert_refused(ome, tmp_path / "ome.ome.zarr")


FORGED_HEADER_PROBE = textwrap.dedent("""
    import json, resource, sys, time
    from n2vpipe.ingest import ingest_tiff
    from n2vpipe.errors import InputError
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        ingest_tiff(sys.argv[1], sys.argv[2], {"z": 64, "y": 256, "x": 256})
        message = None
    except InputError as err:
        message = str(err)
    seconds = time.perf_counter() - start
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"message": message, "seconds": seconds, "grown_mib": grown_kib / 1024}))
""")


@pytest.mark.parametrize(("compression", "forge_imagej", "fragment"), [
    (None, False, "header claims (31622776, 31622776) uint16 voxels (1,999,999,923,892,352 bytes)"),
    ("zlib", False, "bytes (compressed): it is cut short"),
    ("zlib", True, "header claims (4000000000000, 16, 16) uint16 voxels"),
], ids=["uncompressed", "zlib", "zlib-imagej-images"])
def test_a_1_kb_file_claiming_10_to_the_15_voxels_fails_at_once_in_little_memory(
        tmp_path: Path, compression: str | None, forge_imagej: bool, fragment: str) -> None:
    """A tiny ImageJ TIFF whose ImageWidth/ImageLength/RowsPerStrip are forged to 31622776, or whose ImageJ
    'images' and 'slices' claim 4 x 10^12 of its 16 x 16 planes (either way ~10^15 voxels), run in a fresh
    process: it is refused from the header in well under a second, the process's peak memory grows well under
    200 MB, and no output remains."""
    src = tmp_path / "forged.tif"
    tifffile.imwrite(src, np.ones((16, 16), np.uint16), imagej=True, compression=compression,
                     metadata={"axes": "YX"})
    side = 31_622_776
    tags: dict[str, object] = {"ImageWidth": side, "ImageLength": side, "RowsPerStrip": side}
    if forge_imagej:
        with tifffile.TiffFile(src) as tif:
            tags = {"ImageDescription": tif.pages.first.description.replace(
                "images=1", "images=4000000000000\nslices=4000000000000")}
    overwrite_tags(src, **tags)
    assert src.stat().st_size < 1024
    dst = tmp_path / "forged.ome.zarr"
    probe = subprocess.run([sys.executable, "-c", FORGED_HEADER_PROBE, str(src), str(dst)], capture_output=True,
                           text=True, timeout=120, check=True)
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["message"] is not None and result["message"].startswith(f"{src}: "), result
    assert fragment in result["message"], result
    assert result["seconds"] < 0.5 and result["grown_mib"] < 200, result
    assert not dst.exists() and not partial_path(dst).exists()


def test_complex_voxels_are_refused_and_the_policy_is_stated(tmp_path: Path) -> None:
    src = tmp_path / "fft.tif"
    tifffile.imwrite(src, (STACK + 1j * STACK).astype(np.complex64))
    assert_refused(src, tmp_path / "fft.ome.zarr", "complex", "imaginary part would be lost", "float32")
    assert "complex" in DTYPE_POLICY and "float16/32/64" in DTYPE_POLICY


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "int32", "uint32", "int64", "uint64",
                                   "float16", "float32", "float64"])
def test_every_accepted_voxel_type_round_trips(tmp_path: Path, dtype: str) -> None:
    data = (STACK[:3] % 7).astype(dtype)
    tifffile.imwrite(tmp_path / "in.tif", data, photometric="minisblack", metadata={"axes": "ZYX"})
    meta = ingest_tiff(tmp_path / "in.tif", tmp_path / "out.ome.zarr", CHUNKS)
    array, _ = open_ome_zarr(tmp_path / "out.ome.zarr")
    assert meta.axes == "zyx" and meta.dtype == dtype and array.dtype == np.dtype(dtype)
    assert np.array_equal(array[:], data)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_nan_and_inf_are_counted_while_storing_and_refused(tmp_path: Path, compression: str | None) -> None:
    """Counted in every chunk they fall in (here 3 NaN and 2 Inf spread over different chunks), read by byte
    range (uncompressed) or in whole strips (compressed); the partial output is removed."""
    data = STACK.astype(np.float32)
    data[0, 0, 0] = data[9, 63, 47] = data[5, 40, 10] = np.nan
    data[2, 10, 40], data[7, 33, 33] = np.inf, -np.inf
    src = tmp_path / "holes.tif"
    tifffile.imwrite(src, data, metadata={"axes": "ZYX"}, compression=compression)
    assert_refused(src, tmp_path / "holes.ome.zarr", "5 voxels are NaN or infinite")


@pytest.mark.parametrize("layout", [
    {"photometric": "rgb"},
    {"photometric": "rgb", "compression": "zlib", "rowsperstrip": 8},
    {"photometric": "rgb", "planarconfig": "separate"},
    {"photometric": "rgb", "planarconfig": "separate", "compression": "zlib"},
], ids=["contiguous", "contiguous-zlib", "planar", "planar-zlib"])
def test_rgb_samples_become_channels(tmp_path: Path, layout: dict) -> None:
    """Interleaved (YXS) and planar (SYX) RGB: each sample becomes a channel holding that colour."""
    rgb = np.random.default_rng(0).integers(0, 255, size=(40, 70, 3), dtype=np.uint8)
    stored = np.moveaxis(rgb, -1, 0) if layout.get("planarconfig") == "separate" else rgb
    tifffile.imwrite(tmp_path / "rgb.tif", stored, **layout)
    meta = ingest_tiff(tmp_path / "rgb.tif", tmp_path / "rgb.ome.zarr", CHUNKS)
    array, _ = open_ome_zarr(tmp_path / "rgb.ome.zarr")
    assert (meta.axes, meta.shape) == ("cyx", (3, 40, 70))
    assert np.array_equal(array[:], np.moveaxis(rgb, -1, 0))


@pytest.mark.parametrize(("axes", "layout", "canonical"), [
    ("ZYXS", {"imagej": True, "photometric": "rgb"}, (3, 0, 1, 2)),
    ("TZCYX", {"imagej": True, "compression": "zlib"}, (0, 2, 1, 3, 4)),
    ("ZYXS", {"ome": True, "photometric": "rgb"}, (3, 0, 1, 2)),
    ("TCZYX", {"ome": True, "tile": (32, 32), "compression": "zstd"}, (0, 1, 2, 3, 4)),
], ids=["imagej-rgb", "imagej-tzcyx-zlib", "ome-rgb", "ome-tczyx-tiles"])
def test_valid_hyperstacks_pass_the_plane_count_checks(tmp_path: Path, axes: str, layout: dict,
                                                       canonical: tuple[int, ...]) -> None:
    """ImageJ and OME-XML counts of RGB and multi-dimensional files agree with their series (no false alarm)."""
    shape = {"T": 2, "Z": 3, "C": 2, "Y": 40, "X": 64, "S": 3}
    data = np.random.default_rng(1).integers(0, 255, size=[shape[a] for a in axes], dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", data, metadata={"axes": axes}, **layout)
    ingest_tiff(tmp_path / "in.tif", tmp_path / "out.ome.zarr", CHUNKS)
    assert np.array_equal(open_ome_zarr(tmp_path / "out.ome.zarr")[0][:], data.transpose(canonical))


MULTI_FILE_OME = (
    '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
    'UUID="urn:uuid:{uuid}"><Image ID="Image:0"><Pixels DimensionOrder="XYZCT" ID="Pixels:0" SizeX="48" '
    'SizeY="64" SizeZ="4" SizeC="1" SizeT="1" Type="uint16"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
    '<TiffData FirstZ="0" IFD="0" PlaneCount="2"><UUID FileName="a.ome.tif">urn:uuid:a</UUID></TiffData>'
    '<TiffData FirstZ="2" IFD="0" PlaneCount="2"><UUID FileName="b.ome.tif">urn:uuid:b</UUID></TiffData>'
    '</Pixels></Image></OME>')


@pytest.mark.parametrize("damage", [None, "second-file-cut", "second-file-missing"])
def test_a_multi_file_ome_series_is_checked_across_its_files(tmp_path: Path, damage: str | None) -> None:
    """Planes 2-3 of a.ome.tif's series live in b.ome.tif: the claimed size counts both files (no false alarm on
    uncompressed data), and a cut or missing second file fails the acquisition."""
    for name, planes in (("a", STACK[:2]), ("b", STACK[2:4])):
        tifffile.imwrite(tmp_path / f"{name}.ome.tif", planes, description=MULTI_FILE_OME.format(uuid=name),
                         metadata=None)
    if damage == "second-file-cut":
        truncate_file(tmp_path / "b.ome.tif", 6000)
    elif damage == "second-file-missing":
        (tmp_path / "b.ome.tif").unlink()
    src, dst = tmp_path / "a.ome.tif", tmp_path / "a.ome.zarr"
    if damage is None:
        ingest_tiff(src, dst, CHUNKS)
        assert np.array_equal(open_ome_zarr(dst)[0][:], STACK[:4])
    else:
        assert_refused(src, dst, f"its files ({src}, {tmp_path / 'b.ome.tif'}) hold" if damage == "second-file-cut"
                       else "failed to read")


def plane_folder(folder: Path, planes: int = 6) -> Path:
    """A folder of ``planes`` 64x48 uint16 plane TIFFs, compressed so that each plane has its own strips."""
    folder.mkdir()
    for z in range(planes):
        tifffile.imwrite(folder / f"plane_{z}.tif", STACK[z], compression="zlib")
    return folder


@pytest.mark.parametrize("damage", ["shape", "dtype", "cut", "empty-strip"])
def test_a_plane_folder_with_one_bad_plane_is_refused_naming_that_plane(tmp_path: Path, damage: str) -> None:
    """Every plane file must have the first one's shape and voxel type and hold its data; each is checked from
    its headers, and the message names the bad plane file."""
    folder = plane_folder(tmp_path / "planes")
    bad = folder / "plane_4.tif"
    if damage == "shape":
        tifffile.imwrite(bad, STACK[4, :60])
    elif damage == "dtype":
        tifffile.imwrite(bad, STACK[4].astype(np.float32))
    elif damage == "cut":
        truncate_file(bad, bad.stat().st_size - 10)
    else:
        overwrite_tags(bad, StripByteCounts=(0,))
    with pytest.raises(InputError, match=f"^{bad}: ") as caught:
        ingest_tiff(folder, tmp_path / "raw.ome.zarr", CHUNKS)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "raw.ome.zarr").exists() and not partial_path(tmp_path / "raw.ome.zarr").exists()
