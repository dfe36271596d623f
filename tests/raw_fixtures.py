"""Tiny raw GLaS and RITE trees in exactly the published layouts, written with Pillow.

GLaS: one folder of ``<group>_<N>.bmp`` (RGB) + ``<group>_<N>_anno.bmp`` (8-bit instance labels 0..K,
palette-encoded for even N and grayscale for odd N, as both occur) + ``Grade.csv``.
RITE: ``AV_groundTruth/{training,test}/{images,av,vessel}/`` with ``NN_<split>.tif`` RGB TIFFs,
``vessel/NN_<split>.png`` 0/255 grayscale and ``av/NN_<split>.png`` colour labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# (group, N, (height, width)): varying sizes, as in GLaS.
GLAS_IMAGES = [
    ("train", 1, (40, 50)),
    ("train", 2, (36, 44)),
    ("train", 3, (40, 50)),
    ("testA", 1, (38, 48)),
    ("testA", 2, (40, 50)),
    ("testB", 1, (34, 46)),
]
RITE_SHAPE = (44, 40)  # (height, width); the real images are 584 x 565
RITE_IMAGES = {"training": ["21", "22"], "test": ["01", "02"]}
AV_COLOURS = {"artery": (255, 0, 0), "vein": (0, 0, 255), "crossing": (0, 255, 0), "uncertain": (255, 255, 255)}


def gland_labels(shape, rng: np.random.Generator, n_glands: int = 3) -> np.ndarray:
    """uint8 (H, W) instance labels: ``n_glands`` rectangles numbered 1..K on background 0."""
    labels = np.zeros(shape, dtype=np.uint8)
    for instance in range(1, n_glands + 1):
        top, left = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        height, width = rng.integers(4, 9), rng.integers(4, 9)
        labels[top : top + height, left : left + width] = instance
    return labels


def write_glas_tree(directory: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes the GLaS layout into ``directory``; returns {name: (image uint8 (H, W, 3), labels (H, W))}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for group, number, shape in GLAS_IMAGES:
        labels = gland_labels(shape, rng)
        image = rng.integers(150, 230, shape + (3,), dtype=np.uint8)
        image[labels > 0] = (rng.integers(40, 90, (int((labels > 0).sum()), 3))).astype(np.uint8)
        Image.fromarray(image, "RGB").save(directory / f"{group}_{number}.bmp", format="BMP")
        label_image = Image.fromarray(labels, "L")
        if number % 2 == 0:
            # Palette-encoded, with colours unrelated to the indices: the indices are the labels.
            label_image = label_image.convert("P")
            label_image.putpalette([value for index in range(256) for value in ((index * 37) % 256, 255 - index, index)])
        label_image.save(directory / f"{group}_{number}_anno.bmp", format="BMP")
        written[f"{group}_{number}"] = (image, labels)
    (directory / "Grade.csv").write_text("name,patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)\ntrain_1,1,malignant,adenomatous\n")
    return written


def vessel_tree(shape, rng: np.random.Generator) -> np.ndarray:
    """bool (H, W): a few horizontal and vertical one-to-two-pixel 'vessels'."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(3):
        row, column = rng.integers(2, shape[0] - 2), rng.integers(2, shape[1] - 2)
        mask[row : row + rng.integers(1, 3), :] = True
        mask[:, column : column + rng.integers(1, 3)] = True
    return mask


def write_rite_tree(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Writes ``root/AV_groundTruth/...``; returns {stem: (image (H, W, 3), vessel bool (H, W), av (H, W, 3))}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, numbers in RITE_IMAGES.items():
        for kind in ("images", "av", "vessel"):
            (root / "AV_groundTruth" / split / kind).mkdir(parents=True, exist_ok=True)
        for number in numbers:
            stem = f"{number}_{split}"
            vessels = vessel_tree(RITE_SHAPE, rng)
            image = rng.integers(60, 120, RITE_SHAPE + (3,), dtype=np.uint8)
            image[vessels] = 20
            av = np.zeros(RITE_SHAPE + (3,), dtype=np.uint8)
            colours = np.array(list(AV_COLOURS.values()), dtype=np.uint8)
            av[vessels] = colours[rng.integers(0, len(colours), int(vessels.sum()))]
            base = root / "AV_groundTruth" / split
            Image.fromarray(image, "RGB").save(base / "images" / f"{stem}.tif", format="TIFF")
            Image.fromarray(vessels.astype(np.uint8) * 255, "L").save(base / "vessel" / f"{stem}.png", format="PNG")
            Image.fromarray(av, "RGB").save(base / "av" / f"{stem}.png", format="PNG")
            written[stem] = (image, vessels, av)
    return written
