"""Ingest: TIFF flavours to OME-Zarr, read back with an independent reader (ome-zarr-py)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image

from n2vpipe.ingest import StorageAlignedReader, chunk_shape, ingest_tiff
from n2vpipe.io import (
    ContiguousTiffArray,
    ImageMeta,
    InputError,
    blosc_compressor,
    canonical_axes,
    create_ome_zarr,
    export_tiff,
    open_ome_zarr,
    open_tiff_lazy,
    partial_path,
    pyramid_factors,
    write_pyramid,
)
from n2vpipe.layout import is_ome_zarr
from n2vpipe.unet import anisotropic_pooling

CHUNKS = {"z": 8, "y": 32, "x": 32}


def read_with_ome_zarr_py(path: Path) -> tuple[np.ndarray, list[str], list[float]]:
    """Level 0, axis names and level-0 scale as ome-zarr-py sees them."""
    node = next(iter(Reader(parse_url(str(path)))()))
    multiscales = node.metadata
    axes = [a["name"] for a in multiscales["axes"]]
    scale = multiscales["coordinateTransformations"][0][0]["scale"]
    return np.asarray(node.data[0]), axes, scale


def test_imagej_zyx_round_trips_with_voxel_size(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 4000, size=(20, 70, 50), dtype=np.uint16)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, data, imagej=True, resolution=(1 / 0.1, 1 / 0.1),
                     metadata={"axes": "ZYX", "spacing": 0.3, "unit": "um"})
    meta = ingest_tiff(src, tmp_path / "raw.ome.zarr", CHUNKS)
    values, axes, scale = read_with_ome_zarr_py(tmp_path / "raw.ome.zarr")
    assert axes == ["z", "y", "x"]
    assert scale == pytest.approx([0.3, 0.1, 0.1])
    assert np.array_equal(values, data)
    array, reread = open_ome_zarr(tmp_path / "raw.ome.zarr")
    assert array.chunks == (8, 32, 32) and reread == meta


def test_imagej_zcyx_becomes_czyx(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 255, size=(6, 2, 40, 30), dtype=np.uint16)
    src = tmp_path / "two_channel.tif"
    tifffile.imwrite(src, data, imagej=True, metadata={"axes": "ZCYX", "spacing": 0.5})
    ingest_tiff(src, tmp_path / "raw.ome.zarr", CHUNKS, pyramid_levels=1)
    values, axes, _ = read_with_ome_zarr_py(tmp_path / "raw.ome.zarr")
    assert axes == ["c", "z", "y", "x"]
    assert np.array_equal(values, data.transpose(1, 0, 2, 3))


def test_ome_tiff_physical_sizes_are_kept(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 255, size=(5, 33, 31), dtype=np.uint8)
    src = tmp_path / "acq.ome.tif"
    tifffile.imwrite(src, data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.25,
                                                   "PhysicalSizeZ": 1.5})
    meta = ingest_tiff(src, tmp_path / "raw.ome.zarr", CHUNKS)
    assert meta.axes == "zyx" and meta.scale == pytest.approx((1.5, 0.25, 0.2))


def test_2d_image_and_plane_folder(tmp_path: Path) -> None:
    image = np.random.default_rng(3).integers(0, 255, size=(64, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "plane.tif", image)
    assert ingest_tiff(tmp_path / "plane.tif", tmp_path / "a.ome.zarr", CHUNKS).axes == "yx"
    folder = tmp_path / "planes"
    folder.mkdir()
    for z in range(12):
        tifffile.imwrite(folder / f"plane_{z}.tif", image + z)
    meta = ingest_tiff(folder, tmp_path / "b.ome.zarr", CHUNKS)
    values, axes, _ = read_with_ome_zarr_py(tmp_path / "b.ome.zarr")
    assert meta.axes == "zyx" and axes == ["z", "y", "x"]
    assert np.array_equal(values[10], image + 10), "planes must be in natural order (plane_10 after plane_9)"


def test_pyramid_levels_are_written_with_doubling_scales(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(0, 255, size=(8, 128, 128), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, imagej=True, metadata={"axes": "ZYX", "spacing": 4.0})
    ingest_tiff(tmp_path / "s.tif", tmp_path / "p.ome.zarr", CHUNKS, pyramid_levels=3)
    node = next(iter(Reader(parse_url(str(tmp_path / "p.ome.zarr")))()))
    assert [level.shape for level in node.data] == [(8, 128, 128), (8, 64, 64), (8, 32, 32)]
    level1, _ = open_ome_zarr(tmp_path / "p.ome.zarr", level=1)
    assert np.allclose(level1[0, 0, 0], data[0, :2, :2].mean(), atol=1)


def test_bad_input_names_the_file_and_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "broken.tif"
    src.write_bytes(b"this is not a tiff at all")
    with pytest.raises(InputError, match="broken.tif"):
        ingest_tiff(src, tmp_path / "raw.ome.zarr", CHUNKS)
    assert not (tmp_path / "raw.ome.zarr").exists()
    assert not partial_path(tmp_path / "raw.ome.zarr").exists()


def test_unsupported_axes_are_refused() -> None:
    with pytest.raises(ValueError, match="TCZYX"):
        canonical_axes("ZYXR")


def test_tiff_export_opens_as_imagej_hyperstack_with_voxel_size(tmp_path: Path) -> None:
    data = np.random.default_rng(5).integers(0, 255, size=(4, 2, 16, 16), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", data, imagej=True, resolution=(5.0, 5.0),
                     metadata={"axes": "ZCYX", "spacing": 0.7, "unit": "um"})
    ingest_tiff(tmp_path / "in.tif", tmp_path / "raw.ome.zarr", CHUNKS)
    array, meta = open_ome_zarr(tmp_path / "raw.ome.zarr")
    export_tiff(array, meta, tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.series[0].axes == "ZCYX"
        assert np.array_equal(tif.asarray(), data)
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.7)
        assert tif.pages[0].tags["XResolution"].value[0] / tif.pages[0].tags["XResolution"].value[1] == \
            pytest.approx(5.0)


def test_uncompressed_files_are_read_by_byte_range_in_either_byte_order(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 60000, size=(3, 2, 40, 24), dtype=np.uint16)
    for byteorder in ("<", ">"):
        src = tmp_path / f"stack{byteorder == '>'}.tif"
        tifffile.imwrite(src, data, byteorder=byteorder, metadata={"axes": "ZCYX"})
        with open_tiff_lazy(src) as (source, meta, permutation):
            assert isinstance(source, ContiguousTiffArray) and meta.axes == "czyx"
            band = source[slice(1, 3), slice(0, 2), slice(5, 21), slice(3, 17)]
            assert band.dtype == np.uint16 and np.array_equal(band, data[1:3, :, 5:21, 3:17])
        ingest_tiff(src, tmp_path / f"{src.stem}.ome.zarr", CHUNKS)
        assert np.array_equal(open_ome_zarr(tmp_path / f"{src.stem}.ome.zarr")[0][:], data.transpose(1, 0, 2, 3))


def test_a_truncated_uncompressed_file_fails_naming_the_file_and_leaves_no_output(tmp_path: Path) -> None:
    """Refused from its header before any work; a file cut short while it is read fails in the reader too."""
    data = np.random.default_rng(6).integers(0, 60000, size=(4, 40, 24), dtype=np.uint16)
    src = tmp_path / "cut.tif"
    tifffile.imwrite(src, data, photometric="minisblack")
    with open_tiff_lazy(src) as (source, _, _):
        os.truncate(src, src.stat().st_size - 1000)
        with pytest.raises(InputError, match=re.escape(f"{src}: file ends before the image data does")):
            source[slice(3, 4), slice(0, 40), slice(0, 24)]
    with pytest.raises(InputError, match=re.escape(f"{src}: header claims (4, 40, 24) uint16 voxels (7,680 bytes) "
                                                   "but the file holds 7,434 bytes: it is cut short")):
        ingest_tiff(src, tmp_path / "cut.ome.zarr", CHUNKS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif"]


def test_a_damaged_compressed_strip_fails_naming_the_file_and_leaves_no_output(tmp_path: Path) -> None:
    data = np.random.default_rng(7).integers(0, 4000, size=(6, 64, 80), dtype=np.uint16)
    src = tmp_path / "damaged.tif"
    tifffile.imwrite(src, data, compression="zlib", rowsperstrip=16)
    with tifffile.TiffFile(src) as tif:
        offset = tif.pages[2].dataoffsets[1]
    with open(src, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes(64))
    with pytest.raises(InputError, match=re.escape(f"{src}: cannot decode the image data at [")):
        ingest_tiff(src, tmp_path / "damaged.ome.zarr", CHUNKS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.tif"]


def test_a_file_with_several_image_series_warns_which_are_left_out(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Multi-position OME-TIFFs hold one series per position; only the first becomes the acquisition, and the
    job log says so instead of dropping the others silently."""
    first, second = np.ones((3, 16, 16), np.uint16), np.zeros((2, 8, 8), np.uint16)
    with tifffile.TiffWriter(tmp_path / "positions.ome.tif", ome=True) as writer:
        writer.write(first, metadata={"axes": "ZYX"})
        writer.write(second, metadata={"axes": "ZYX"})
    with caplog.at_level(logging.WARNING, logger="n2vpipe.io"):
        ingest_tiff(tmp_path / "positions.ome.tif", tmp_path / "positions.ome.zarr", CHUNKS)
    assert f"{tmp_path / 'positions.ome.tif'} holds 2 image series: only series 0 (ZYX (3, 16, 16)) is " \
           "ingested; left out: series 1 (ZYX (2, 8, 8))" in caplog.text
    assert np.array_equal(open_ome_zarr(tmp_path / "positions.ome.zarr")[0][:], first)


class CountingArray:
    """A numpy array that records the regions read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        self.reads.append(key)
        return self.data[key]


@pytest.mark.parametrize(("layout", "region_starts", "region_columns"), [
    ({"rowsperstrip": 24, "compression": "lzw"}, [(z, y, 0) for z in (0, 8) for y in (0, 24, 48, 96)], {(0, 60)}),
    ({"tile": (16, 32), "compression": "zstd"}, [(z, y, x) for z in (0, 8) for y in (0, 32, 64, 96) for x in (0, 32)],
     {(0, 32), (32, 60)}),
], ids=["lzw-strips", "zstd-tiles"])
def test_compressed_files_are_read_in_whole_strips_or_tiles_each_decoded_once(
        tmp_path: Path, layout: dict, region_starts: list, region_columns: set) -> None:
    """Strips: bands of full-width rows; tiles: only the tiles a chunk touches; either way each region is read
    once, however many chunks share it. LZW and zstd (common in the wild) decode through imagecodecs."""
    data = np.random.default_rng(4).integers(0, 4000, size=(12, 100, 60), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "packed.tif", data, **layout)
    with open_tiff_lazy(tmp_path / "packed.tif") as (source, meta, permutation):
        storage = source.chunks[-2:]
    counting = CountingArray(data)
    reader = StorageAlignedReader(counting, storage, tmp_path / "packed.tif")
    chunks = chunk_shape(meta, CHUNKS)
    copied = da.from_array(reader, chunks=chunks, meta=data[:0, :0, :0]).compute(scheduler="threads", num_workers=2)
    assert np.array_equal(copied, data)
    assert sorted((read[0].start, read[1].start, read[2].start) for read in counting.reads) == region_starts
    assert {(read[-1].start, read[-1].stop) for read in counting.reads} == region_columns
    ingest_tiff(tmp_path / "packed.tif", tmp_path / "packed.ome.zarr", CHUNKS, threads=2)
    assert np.array_equal(open_ome_zarr(tmp_path / "packed.ome.zarr")[0][:], data)


def test_ngff_05_images_from_another_writer_open_in_place(tmp_path: Path) -> None:
    data = np.random.default_rng(5).integers(0, 4000, size=(2, 6, 32, 40), dtype=np.uint16)
    write_image(data, str(tmp_path / "other.ome.zarr"), axes="czyx", scale_factors=(),
                scale={"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.5})
    array, meta = open_ome_zarr(tmp_path / "other.ome.zarr")
    assert is_ome_zarr(tmp_path / "other.ome.zarr") and not is_ome_zarr(tmp_path)
    assert (meta.axes, meta.shape, meta.scale) == ("czyx", data.shape, (1.0, 2.0, 0.5, 0.5))
    assert np.array_equal(array[:], data)
    (tmp_path / "odd.ome.zarr").mkdir()
    with pytest.raises(InputError, match="odd.ome.zarr: not an OME-Zarr image"):
        open_ome_zarr(tmp_path / "odd.ome.zarr")


def test_integer_pyramid_levels_round_to_the_nearest_value(tmp_path: Path) -> None:
    """2x2 means of 1, 2, 2, 2 (1.75) and 1, 1, 1, 2 (1.25) are stored as 2 and 1, not truncated to 1 and 1."""
    meta = ImageMeta("yx", (64, 64), "uint16", (0.1, 0.1))
    level0 = np.tile(np.array([[1, 2, 1, 1], [2, 2, 1, 2]], dtype=np.uint16), (32, 16))
    create_ome_zarr(tmp_path / "img.ome.zarr", meta, (32, 32), blosc_compressor("zstd", 1), "img")[:] = level0
    assert write_pyramid(tmp_path / "img.ome.zarr", 2, blosc_compressor("zstd", 1)) == 2
    level1, _ = open_ome_zarr(tmp_path / "img.ome.zarr", level=1)
    assert level1.dtype == np.uint16
    np.testing.assert_array_equal(level1[:2, :2], [[2, 1], [2, 1]])


@pytest.mark.parametrize(("z_scale", "halves_z"), [(0.1, True), (0.14, True), (0.16, False), (0.4, False)])
def test_the_network_and_the_pyramid_share_one_anisotropy_rule(z_scale: float, halves_z: bool) -> None:
    meta = ImageMeta("zyx", (16, 64, 64), "uint16", (z_scale, 0.1, 0.1))
    assert (pyramid_factors(meta)[0] == 2) is halves_z
    assert (anisotropic_pooling(1, (z_scale, 0.1, 0.1))[0][0] == 2) is halves_z
