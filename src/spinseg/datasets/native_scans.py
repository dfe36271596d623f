"""Synthetic scans as they come off a scanner: an MNI-space subject moved by a known random affine
and sampled on a native grid (sagittal 1 mm, axial 0.9 x 0.9 x 5 mm, ...), for the registration tests
the registration-library comparison and the benchmark's end-to-end predict phase."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

BRAIN_CENTRE_MM = np.array([0.0, -18.0, 15.0])


def random_affine(rng: np.random.Generator, rotation_deg: float = 15.0, shift_mm: float = 30.0,
                  scale: float = 0.10) -> np.ndarray:
    """4x4 MNI world mm -> scan world mm: rotation (each Euler angle up to ``rotation_deg``) and
    per-axis scaling (1 +- ``scale``) about the brain's centre, then a shift (each axis up to ``shift_mm``)."""
    rotation = Rotation.from_euler("xyz", rng.uniform(-rotation_deg, rotation_deg, 3), degrees=True).as_matrix()
    linear = rotation @ np.diag(rng.uniform(1 - scale, 1 + scale, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = BRAIN_CENTRE_MM - linear @ BRAIN_CENTRE_MM + rng.uniform(-shift_mm, shift_mm, 3)
    return matrix


def native_grid(kind: str, head_low: np.ndarray, head_high: np.ndarray, voxel_mm=None) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, 4x4 affine) of a scanner grid covering the world box [head_low, head_high] (mm).

    ``sagittal``: LIA orientation (i -> left, j -> inferior, k -> anterior), default 1 mm;
    ``axial``: RAS orientation, default 0.9 x 0.9 x 5 mm.
    """
    if kind == "sagittal":
        sizes = np.full(3, 1.0) if voxel_mm is None else np.asarray(voxel_mm, float)
        axes = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]).T  # columns: world direction of i, j, k
    elif kind == "axial":
        sizes = np.array([0.9, 0.9, 5.0]) if voxel_mm is None else np.asarray(voxel_mm, float)
        axes = np.eye(3)
    else:
        raise ValueError(kind)
    affine = np.eye(4)
    affine[:3, :3] = axes * sizes
    extent = np.abs(axes.T) @ (head_high - head_low)
    shape = tuple(int(np.ceil(length / size)) + 1 for length, size in zip(extent, sizes))
    # Start at the corner of the box that voxel (0, 0, 0) must sit on for these axis directions.
    corner = np.where(axes.sum(axis=1) < 0, head_high, head_low)
    affine[:3, 3] = corner
    return shape, affine


def moved_head_box(volume: np.ndarray, affine: np.ndarray, moving: np.ndarray, margin_mm: float = 10.0):
    """World box (low, high) of the moved head: non-zero voxels of ``volume`` mapped by ``moving``."""
    indices = np.argwhere(volume > 0.05 * volume.max()).T.astype(float)
    world = moving[:3, :3] @ (affine[:3, :3] @ indices + affine[:3, 3:4]) + (moving[:3, 3:4])
    return world.min(axis=1) - margin_mm, world.max(axis=1) + margin_mm


def sample_on_grid(volume: np.ndarray, affine: np.ndarray, moving: np.ndarray, shape, grid_affine, order: int = 1) -> np.ndarray:
    """``volume`` (on ``affine``, MNI space) moved by ``moving`` and sampled on (shape, grid_affine): (X, Y, Z) float32."""
    to_source = np.linalg.inv(affine) @ np.linalg.inv(moving) @ grid_affine
    return ndimage.affine_transform(volume.astype(np.float32), to_source[:3, :3], to_source[:3, 3], output_shape=tuple(shape),
                                    order=order, mode="constant", cval=0.0).astype(np.float32)


def sagittal_scanner_scan(t1: np.ndarray, affine: np.ndarray, moving: np.ndarray,
                          shape: tuple[int, int, int] = (176, 256, 256), voxel_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A scanner's sagittal MPRAGE of an MNI-space head ``t1`` (on ``affine``) moved by ``moving``:
    (X, Y, Z) float32 on a LIA grid of ``shape`` at ``voxel_mm``, centred on the moved brain, and its 4x4 affine."""
    axes = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]).T * voxel_mm  # columns: world step of i, j, k
    grid_affine = np.eye(4)
    grid_affine[:3, :3] = axes
    centre = moving[:3, :3] @ BRAIN_CENTRE_MM + moving[:3, 3]
    grid_affine[:3, 3] = centre - axes @ (np.array(shape) - 1) / 2
    return sample_on_grid(t1, affine, moving, shape, grid_affine), grid_affine


def mean_displacement_mm(recovered: np.ndarray, truth: np.ndarray, points_mm: np.ndarray) -> float:
    """Mean distance (mm) between two 4x4 maps applied to (N, 3) points."""
    difference = (recovered - truth)[:3]
    return float(np.linalg.norm(points_mm @ difference[:, :3].T + difference[:, 3], axis=1).mean())
