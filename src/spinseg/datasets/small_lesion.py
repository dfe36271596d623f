"""The paper's small-lesion subset: axial slices whose every lesion is small.

A slice (last axis of an ATLAS volume) belongs to the subset when its ground truth holds at least
one lesion and every 8-connected lesion in it has at most ``SMALL_LESION_MAX_PIXELS`` (100) pixels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from spinseg.constants import SMALL_LESION_MAX_PIXELS
from spinseg.lesions import component_sizes, label_in_slice_components


def largest_lesion_per_slice(mask_volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per axial slice of a (H, W, D) mask: (number of 8-connected lesions, pixels of the largest).

    Voxels > 0 are lesion. Returns two int64 arrays of shape (D,).
    """
    mask = np.asarray(mask_volume) > 0
    if mask.ndim != 3:
        raise ValueError(f"expected a (H, W, D) mask, got shape {mask.shape}")
    labels, count = label_in_slice_components(mask)
    depth = mask.shape[2]
    lesion_counts = np.zeros(depth, dtype=np.int64)
    largest = np.zeros(depth, dtype=np.int64)
    if count == 0:
        return lesion_counts, largest
    sizes = component_sizes(labels, count)
    # Each component lives in exactly one slice; find_objects gives its slice index cheaply.
    slices_of = np.array([box[2].start for box in ndimage.find_objects(labels)], dtype=np.int64)
    np.add.at(lesion_counts, slices_of, 1)
    np.maximum.at(largest, slices_of, sizes)
    return lesion_counts, largest


def small_lesion_slices(mask_volume: np.ndarray, max_pixels: int = SMALL_LESION_MAX_PIXELS) -> np.ndarray:
    """Indices (int64, ascending, shape (K,)) of the axial slices of a (H, W, D) mask in the subset.

    A slice qualifies when it has >= 1 lesion (8-connected component of voxels > 0) and every
    lesion has <= ``max_pixels`` pixels.
    """
    lesion_counts, largest = largest_lesion_per_slice(mask_volume)
    return np.flatnonzero((lesion_counts > 0) & (largest <= max_pixels)).astype(np.int64)


def small_lesion_map(mask_volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """The (H, W, D) uint8 ground truth restricted to ``slices``: other slices are set to 0."""
    binary = (np.asarray(mask_volume) > 0).astype(np.uint8)
    restricted = np.zeros_like(binary)
    restricted[:, :, slices] = binary[:, :, slices]
    return restricted


__all__ = ["largest_lesion_per_slice", "small_lesion_map", "small_lesion_slices"]
