"""How inputs lie on disk: acquisition names, folders of one TIFF per plane, OME-Zarr folders.

Standard library only: the workflow imports this while Snakemake parses, before any job runs."""

from __future__ import annotations

import re
from pathlib import Path

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")


def acquisition_name(path: Path) -> str:
    """Name of the acquisition stored at ``path``: the file name without TIFF or Zarr suffixes."""
    name = path.name
    for suffix in TIFF_SUFFIXES + ZARR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def plane_files(folder: Path) -> list[Path]:
    """The TIFF files of a one-file-per-plane folder, in natural sort order."""
    files = [p for p in folder.iterdir() if p.name.lower().endswith((".tif", ".tiff"))]
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def is_ome_zarr(path: Path) -> bool:
    """Whether ``path`` looks like an OME-Zarr image folder (by name or by its Zarr metadata files)."""
    path = Path(path)
    return path.is_dir() and (path.name.lower().endswith(ZARR_SUFFIXES) or (path / ".zattrs").exists()
                              or (path / "zarr.json").exists())
