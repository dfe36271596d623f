"""Normalisation and the release's training augmentation, on torch tensors.

Augmentation works on raw intensities (background 0) so that rotation fills with background;
normalisation and noise follow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Normalization:
    """"standard" (x - mean) / std per channel, or "none". Means/stds broadcast over channels."""

    kind: str = "standard"
    means: list[float] = field(default_factory=lambda: [30.20063])
    stddevs: list[float] = field(default_factory=lambda: [35.221165])

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


def rotate(tensor: torch.Tensor, degrees: float, mode: str) -> torch.Tensor:
    """Rotates (C, H, W) about the centre by ``degrees`` in pixel space, filling with 0."""
    _, height, width = tensor.shape
    angle = math.radians(degrees)
    cosine, sine = math.cos(angle), math.sin(angle)
    # affine_grid works in normalised coordinates; the aspect ratio keeps the rotation rigid.
    theta = torch.tensor(
        [[cosine, -sine * height / width, 0.0], [sine * width / height, cosine, 0.0]], dtype=tensor.dtype
    ).unsqueeze(0)
    grid = F.affine_grid(theta, (1,) + tuple(tensor.shape), align_corners=False)
    return F.grid_sample(tensor.unsqueeze(0), grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def resize_and_crop(tensor: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """Enlarges (C, H, W) by ``scale`` >= 1, then crops the centre back to (H, W)."""
    _, height, width = tensor.shape
    new_height, new_width = max(height, round(height * scale)), max(width, round(width * scale))
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    resized = F.interpolate(tensor.unsqueeze(0), size=(new_height, new_width), mode=mode, **kwargs)[0]
    top, left = (new_height - height) // 2, (new_width - width) // 2
    return resized[:, top : top + height, left : left + width]


def augment(
    image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, config: AugmentationConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies flips, rotation and resize to raw ``image`` (C, H, W) and ``mask`` (1, H, W) alike."""
    if "horizontal" in config.flip_type and rng.random() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if "vertical" in config.flip_type and rng.random() < 0.5:
        image, mask = image.flip(-2), mask.flip(-2)
    if config.rotate_degrees > 0 and rng.random() < 0.5:
        degrees = rng.uniform(-config.rotate_degrees, config.rotate_degrees)
        image, mask = rotate(image, degrees, "nearest"), rotate(mask, degrees, "nearest")
    low, high = config.resize_and_pad
    if high > low and rng.random() < 0.5:
        scale = rng.uniform(low, high)
        image, mask = resize_and_crop(image, scale, "bilinear"), resize_and_crop(mask, scale, "nearest")
    return image, mask


def add_noise(image: torch.Tensor, rng: np.random.Generator, config: AugmentationConfig) -> torch.Tensor:
    """Adds zero-mean Gaussian noise (std ``noise_spread``) to a normalised image."""
    if config.noise_type != "gaussian" or config.noise_spread <= 0:
        return image
    noise = rng.standard_normal(image.shape).astype(np.float32) * config.noise_spread
    return image + torch.from_numpy(noise)
