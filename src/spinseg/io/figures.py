"""Pictures of predictions: per-slice panels and montages with lesion overlays (numpy + Pillow), and
the PNG writer of matplotlib figures (plots; matplotlib is imported only there, ~0.5 s)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spinseg.io.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    if tight_layout:
        figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, bbox_inches=None if tight_layout else "tight")
    return Path(path)


def save_slice_panel(scan_slice, ground_truth_slice, prediction_slice, path, title: str = "") -> Path:
    """PNG with three panels: scan | ground truth overlay (green) | prediction overlay (red)."""
    panels = [
        (overlay(scan_slice, []), "scan"),
        (overlay(scan_slice, [(ground_truth_slice, GROUND_TRUTH_COLOUR)]), "ground truth"),
        (overlay(scan_slice, [(prediction_slice, PREDICTION_COLOUR)]), "prediction"),
    ]
    return save_panel_grid(panels, path, columns=3, title=title, cell_pixels=300)


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
    crops = crops or []
    columns = min(6, max(len(indices), len(crops), 1))
    panels = []
    for index in indices:
        layers = [(prediction[..., index], PREDICTION_COLOUR)]
        if ground_truth is not None:
            layers.insert(0, (ground_truth[..., index], GROUND_TRUTH_COLOUR))
        panels.append((overlay(scan[..., index], layers), f"slice {index}"))
    # The crops start on a row of their own.
    panels += [None] * (-len(panels) % columns)
    panels += [(overlay(crop_scan, [(crop_mask, PREDICTION_COLOUR)]), crop_title) for crop_scan, crop_mask, crop_title in crops]
    return save_panel_grid(panels, path, columns=columns, title=title)


def caption_font(size: int):
    """Pillow's bundled font at ``size`` px (its small bitmap font where Pillow lacks FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or built without FreeType
        return ImageFont.load_default()


def draw_centred(draw, centre: tuple[int, int], text: str, font) -> None:
    """Writes ``text`` in black centred on ``centre`` (x, y) px (measured, so bitmap fonts work too)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((centre[0] - (left + right) // 2, centre[1] - (top + bottom) // 2), text, fill="black", font=font)


def save_panel_grid(
    panels: list, path: str | os.PathLike, columns: int, title: str = "", cell_pixels: int = 220,
) -> Path:
    """Lays RGB panels out on a white grid with a caption above each and writes a PNG, atomically.

    ``panels``: (image (h, w, 3) in [0, 1], caption) or None for an empty cell, row by row,
    ``columns`` per row. Each image is scaled to fit a ``cell_pixels`` square keeping its aspect
    ratio (nearest neighbour, so voxels stay visible). Drawn with numpy and Pillow, not matplotlib:
    a predict run's QC picture took ~2 s through matplotlib's axes and ~0.1 s this way.
    """
    from PIL import Image, ImageDraw

    caption_height, title_height, gap = 18, (24 if title else 0), 4
    rows = max(1, -(-len(panels) // columns))
    width = columns * (cell_pixels + gap) + gap
    height = title_height + rows * (caption_height + cell_pixels + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = caption_font(12)
    if title:
        draw_centred(draw, (width // 2, title_height // 2 + 2), title, caption_font(15))
    for position, panel in enumerate(panels):
        if panel is None:
            continue
        image, caption = panel
        pixels = np.clip(np.asarray(image, dtype=np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
        scale = cell_pixels / max(pixels.shape[0], pixels.shape[1], 1)
        size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
        tile = Image.fromarray(np.ascontiguousarray(pixels), "RGB").resize(size, Image.NEAREST)
        row, column = divmod(position, columns)
        left = gap + column * (cell_pixels + gap)
        top = title_height + gap + row * (caption_height + cell_pixels + gap)
        draw_centred(draw, (left + cell_pixels // 2, top + caption_height // 2), caption, font)
        canvas.paste(tile, (left + (cell_pixels - size[0]) // 2, top + caption_height + (cell_pixels - size[1]) // 2))
    with atomic_path(path, suffix=".png") as temporary:
        # zlib level 1: a QC picture of 1,350 x 750 px is written in 0.04 s instead of 0.17 s at the
        # default level 6, and its file is as small (flat backgrounds and masks compress either way).
        canvas.save(temporary, format="PNG", compress_level=1)
    return Path(path)
