"""Voxel geometry shared by the network and the image pyramid: when Z counts as coarse."""

from __future__ import annotations

ANISOTROPY_RATIO = 1.5
"""Z voxels this many times coarser than in-plane ones (or more) are not halved further."""


def z_is_coarse(z_scale: float, y_scale: float) -> bool:
    """Whether Z voxels are at least :data:`ANISOTROPY_RATIO` times coarser than in-plane ones: then
    neither the U-Net's pooling (``train.pooling: auto``) nor the OME-Zarr pyramid halves Z."""
    return z_scale >= ANISOTROPY_RATIO * y_scale
