"""Lesions as connected components: the one labelling used by set-up, prediction reports and metrics.

Kept at the bottom of the package (numpy and scipy only) so that ``datasets/``, ``inference/`` and
``evaluation/`` all label lesions the same way without importing each other.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# 8-connectivity inside an axial slice (last axis) and none across slices, so one labelling call
# over an (H, W, D) volume gives every slice's 2-D components at once (far faster than a Python
# loop over 189 slices). The paper's small-lesion subset is defined on these.
IN_SLICE_8_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
IN_SLICE_8_CONNECTED[:, :, 1] = True


def _connectivity_ranks(ndim: int) -> dict[int, int]:
    """Maps neighbour counts to generate_binary_structure ranks for ``ndim`` (3-D: 6->1, 18->2, 26->3)."""
    # A neighbour at rank k differs in at most k coordinates, each by +-1.
    return {
        sum(math.comb(ndim, changed) * 2**changed for changed in range(1, rank + 1)): rank
        for rank in range(1, ndim + 1)
    }


def full_connectivity(ndim: int) -> int:
    """The largest neighbour count for ``ndim`` dimensions (1-D: 2, 2-D: 8, 3-D: 26)."""
    return 3**ndim - 1


def connectivity_structure(ndim: int, connectivity: int) -> np.ndarray:
    """The scipy.ndimage structuring element for ``connectivity`` neighbours in ``ndim`` dimensions.

    3-D accepts 6, 18 or 26; 2-D accepts 4 or 8; 1-D accepts 2. Returns a bool array of shape (3,)*ndim.
    """
    ranks = _connectivity_ranks(ndim)
    if connectivity not in ranks:
        raise ValueError(
            f"connectivity {connectivity} is not valid for {ndim}-D masks; choose one of {sorted(ranks)}"
        )
    return ndimage.generate_binary_structure(ndim, ranks[connectivity])


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of a bool mask of any shape: (labels int32 of its shape, count); background is 0."""
    labels, count = ndimage.label(mask, structure=connectivity_structure(mask.ndim, connectivity))
    return labels, int(count)


def label_in_slice_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of each axial slice of a bool (H, W, D) mask: (labels (H, W, D), count)."""
    labels, count = ndimage.label(mask, structure=IN_SLICE_8_CONNECTED)
    return labels, int(count)


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels of each component 1..count of ``labels``: int64 array of shape (count,)."""
    return np.bincount(labels.ravel(), minlength=count + 1)[1:]
