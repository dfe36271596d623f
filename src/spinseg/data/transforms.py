"""Normalisation and the release's training augmentation, on numpy arrays (C, H, W).

Augmentation works on raw intensities (background 0) so that rotation fills with background;
normalisation and noise follow.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from spinseg.constants import ATLAS_MEAN, ATLAS_STD


@dataclass
class Normalization:
    """"standard" (x - mean) / std per channel, or "none". Means/stds broadcast over channels."""

    kind: str = "standard"
    means: list[float] = field(default_factory=lambda: [ATLAS_MEAN])
    stddevs: list[float] = field(default_factory=lambda: [ATLAS_STD])

    def __post_init__(self):
        if self.kind not in ("standard", "none"):
            raise ValueError(f"unknown dataset normalization {self.kind!r}")
        if any(s <= 0 for s in self.stddevs):
            raise ValueError("dataset stddevs must be positive")

    def pad_value(self) -> float:
        """Raw value that normalises to 0 (used to pad slices beyond the volume)."""
        return float(self.means[0]) if self.kind == "standard" else 0.0

    def __call__(self, image: torch.Tensor | np.ndarray, channel_axis: int = -3):
        """Normalises (..., C, H, W); with one mean it applies to every channel."""
        if self.kind == "none":
            return image
        means = np.asarray(self.means, dtype=np.float32)
        stddevs = np.asarray(self.stddevs, dtype=np.float32)
        shape = [1] * image.ndim
        shape[channel_axis] = len(means)
        if isinstance(image, torch.Tensor):
            return (image - torch.from_numpy(means).reshape(shape)) / torch.from_numpy(stddevs).reshape(shape)
        return (image - means.reshape(shape)) / stddevs.reshape(shape)


@dataclass
class AugmentationConfig:
    """The release's augmentation: each enabled transform applies with probability 0.5 to an augmented sample."""

    flip_type: tuple[str, ...] = ("horizontal", "vertical")
    rotate_degrees: float = 30.0
    noise_type: str = "gaussian"
    noise_spread: float = 1e-2
    resize_and_pad: tuple[float, float] = (1.0, 1.1)


def rotate(array: np.ndarray, degrees: float, order: int) -> np.ndarray:
    """Rotates (C, H, W) about the centre by ``degrees`` (order 0 = nearest), filling with 0."""
    return ndimage.rotate(array, degrees, axes=(1, 2), reshape=False, order=order, mode="constant", cval=0.0)


def resize_and_crop(array: np.ndarray, scale: float, order: int) -> np.ndarray:
    """Rescales (C, H, W) by ``scale`` and brings it back to (H, W) about the centre.

    ``scale`` > 1 enlarges then crops (SPiN's 1.0-1.1 "resize and pad"); ``scale`` < 1 shrinks
    then pads with 0 (the U-Net recipe's 0.9-1.0 "crop and pad").
    """
    _, height, width = array.shape
    resized = ndimage.zoom(array, (1, scale, scale), order=order, mode="nearest", grid_mode=True)
    new_height, new_width = resized.shape[1:]
    out = np.zeros_like(array)
    # Offsets of the overlap in the resized (source) and original (target) frames.
    source_top, target_top = max(0, (new_height - height) // 2), max(0, (height - new_height) // 2)
    source_left, target_left = max(0, (new_width - width) // 2), max(0, (width - new_width) // 2)
    rows, columns = min(height, new_height), min(width, new_width)
    out[:, target_top : target_top + rows, target_left : target_left + columns] = resized[
        :, source_top : source_top + rows, source_left : source_left + columns
    ]
    return out


def augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: AugmentationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Applies flips, rotation and resize to raw ``image`` (C, H, W) and ``mask`` (1, H, W) alike.

    Runs in numpy/scipy (single-threaded C) rather than torch: for arrays this small, torch's
    thread pool costs more than the work, badly so on a busy 2-core machine.
    """
    if "horizontal" in config.flip_type and rng.random() < 0.5:
        image, mask = image[..., ::-1], mask[..., ::-1]
    if "vertical" in config.flip_type and rng.random() < 0.5:
        image, mask = image[..., ::-1, :], mask[..., ::-1, :]
    if config.rotate_degrees > 0 and rng.random() < 0.5:
        degrees = rng.uniform(-config.rotate_degrees, config.rotate_degrees)
        image, mask = rotate(image, degrees, order=0), rotate(mask, degrees, order=0)
    low, high = config.resize_and_pad
    if high > low and rng.random() < 0.5:
        scale = rng.uniform(low, high)
        image, mask = resize_and_crop(image, scale, order=1), resize_and_crop(mask, scale, order=0)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def add_noise(image: np.ndarray, rng: np.random.Generator, config: AugmentationConfig) -> np.ndarray:
    """Adds zero-mean Gaussian noise (std ``noise_spread``) to a normalised (C, H, W) image."""
    if config.noise_type != "gaussian" or config.noise_spread <= 0:
        return image
    return image + rng.standard_normal(image.shape).astype(np.float32) * np.float32(config.noise_spread)
