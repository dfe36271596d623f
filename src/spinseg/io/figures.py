"""Pictures of predictions: per-slice panels and montages with lesion overlays (matplotlib, Agg)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spinseg.io.files import atomic_path

GROUND_TRUTH_COLOUR = (0.1, 0.9, 0.2)
PREDICTION_COLOUR = (0.95, 0.15, 0.15)


def overlay(scan_slice: np.ndarray, masks_and_colours, alpha: float = 0.55) -> np.ndarray:
    """Grey (H, W) slice with coloured masks blended on top -> RGB (H, W, 3) in [0, 1].

    Slices are shown transposed and flipped so that anterior is up, as radiological viewers do
    for volumes stored x-y-z (ATLAS / MNI).
    """
    scan_slice = np.asarray(scan_slice, dtype=np.float32)
    low, high = np.percentile(scan_slice, [1, 99.5]) if scan_slice.size else (0, 1)
    grey = np.clip((scan_slice - low) / (high - low + 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for mask, colour in masks_and_colours:
        mask = np.asarray(mask) > 0
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return np.rot90(rgb)


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 100, tight_layout: bool = False) -> Path:
    """Renders ``figure`` through an Agg canvas into ``path`` as PNG, atomically; returns the path.

    By default the PNG is cropped to the drawn content (``bbox_inches="tight"``); with
    ``tight_layout`` the subplots are laid out to fit the figure's own size instead (plots with axes
    labels that must keep their size).
    """
    FigureCanvasAgg(figure)
    if tight_layout:
        figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, bbox_inches=None if tight_layout else "tight")
    return Path(path)


def save_slice_panel(scan_slice, ground_truth_slice, prediction_slice, path, title: str = "") -> Path:
    """PNG with three panels: scan | ground truth overlay (green) | prediction overlay (red)."""
    figure = Figure(figsize=(9, 3.4))
    panels = [
        ("scan", overlay(scan_slice, [])),
        ("ground truth", overlay(scan_slice, [(ground_truth_slice, GROUND_TRUTH_COLOUR)])),
        ("prediction", overlay(scan_slice, [(prediction_slice, PREDICTION_COLOUR)])),
    ]
    for position, (name, image) in enumerate(panels, start=1):
        axis = figure.add_subplot(1, 3, position)
        axis.imshow(image)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def montage_slices(mask: np.ndarray, count: int, fallback_depth: int) -> np.ndarray:
    """Up to ``count`` axial slice indices spread over the slices holding ``mask`` (else the whole depth)."""
    occupied = np.flatnonzero(np.asarray(mask).reshape(-1, mask.shape[-1]).any(axis=0)) if mask is not None else []
    pool = occupied if len(occupied) else np.arange(fallback_depth)
    picks = np.linspace(0, len(pool) - 1, num=min(count, len(pool))).round().astype(int)
    return np.unique(np.asarray(pool)[picks])


def save_overlay_montage(
    scan: np.ndarray, prediction: np.ndarray, path, ground_truth: np.ndarray | None = None, count: int = 12, title: str = "",
    crops: list | None = None,
) -> Path:
    """Montage of axial slices of (H, W, D) with prediction (red) and optional ground truth (green).

    ``crops``: optional (scan (h, w), prediction (h, w), title) zoomed panels shown in extra rows after the slices.
    """
    union = prediction if ground_truth is None else (np.asarray(prediction) > 0) | (np.asarray(ground_truth) > 0)
    indices = montage_slices(union, count, scan.shape[-1])
    columns = min(6, max(len(indices), len(crops or [])))
    slice_rows = int(np.ceil(len(indices) / columns))
    rows = slice_rows + int(np.ceil(len(crops or []) / columns))
    figure = Figure(figsize=(2.2 * columns, 2.5 * rows))
    for position, (crop_scan, crop_mask, crop_title) in enumerate(crops or [], start=slice_rows * columns + 1):
        axis = figure.add_subplot(rows, columns, position)
        axis.imshow(overlay(crop_scan, [(crop_mask, PREDICTION_COLOUR)]))
        axis.set_title(crop_title, fontsize=7)
        axis.axis("off")
    for position, index in enumerate(indices, start=1):
        layers = [(prediction[..., index], PREDICTION_COLOUR)]
        if ground_truth is not None:
            layers.insert(0, (ground_truth[..., index], GROUND_TRUTH_COLOUR))
        axis = figure.add_subplot(rows, columns, position)
        axis.imshow(overlay(scan[..., index], layers))
        axis.set_title(f"slice {index}", fontsize=8)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)
