"""2-D RGB data sets (GLaS, RITE), training side: the prepared ``.npy`` images and masks, and training samples.

The prepared layout is written by :mod:`spinseg.datasets.images_2d` (its docstring describes it). The
release trains on uniformly random ``n_height`` x ``n_width`` crops (128 x 128 for GLaS and RITE) of the
whole, un-resized image and predicts on whole images; :class:`ImageTrainingDataset` and
:func:`spinseg.inference.predictor.predict_image` do the same.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from spinseg.errors import UserInputError, fail
from spinseg.data.transforms import AugmentationConfig, Normalization, add_noise, augment
from spinseg.datasets.images_2d import check_label_size


def resize_probabilities(probabilities: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of float (H, W) probabilities to ``shape`` (h, w), e.g. back to an image's original size."""
    if tuple(probabilities.shape) == tuple(shape):
        return probabilities.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def read_statistics(path: str | os.PathLike) -> dict:
    """Reads a ``statistics.json`` written by the setup scripts."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise fail(path, f"cannot read dataset statistics ({error})") from None


def is_rgb_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a prepared 2-D colour image, i.e. a ``.npy`` of shape (H, W, 3).

    The trainer/evaluator use this on the first listed scan to choose the 2-D RGB pipeline (ATLAS
    volumes are (H, W, D) with D = 189). Reads only the header.
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return array.ndim == 3 and array.shape[-1] == 3


def load_image(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Opens a prepared image ``.npy`` (H, W, 3), memory-mapped; a bad file -> one-line UserInputError."""
    array = _load_checked(path, mmap)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise fail(path, f"expected an (H, W, 3) RGB image, found shape {array.shape}")
    return array


def load_mask(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Opens a prepared ground truth ``.npy`` (H, W) (a trailing channel of 1 is dropped), memory-mapped."""
    array = _load_checked(path, mmap)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise fail(path, f"expected an (H, W) mask, found shape {array.shape}")
    return array


def _load_checked(path, mmap: bool) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise fail(path, "file not found")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise fail(path, f"not a readable .npy array ({str(error).splitlines()[0][:120]})") from None
    if array.dtype.kind not in "biuf":
        raise fail(path, f"expected a numeric array, found dtype {array.dtype}")
    return array


class ImageTrainingDataset(Dataset):
    """Training samples from 2-D RGB images: item i -> (image (3, h, w), mask (1, h, w)), float32.

    Drop-in for :class:`~spinseg.data.slices.SliceTrainingDataset` (same attributes and ``set_epoch``).
    One sample is one image: with ``crop_shape`` (h, w) a window is cut out of it (the release's 128 x 128
    uniformly random crops); with probability ``positive_class_sample_rate`` the window is instead
    placed to contain a random foreground pixel (0 = the release's uniform crops). Windows larger than
    the image are padded with the per-channel means (0 after normalisation; mask 0). Without
    ``crop_shape`` the whole image is used, so all images must have the same size to be batched.
    Randomness comes from ``np.random.default_rng((seed, epoch, index))``: reproducible with any
    number of workers and after a resume.
    """

    def __init__(
        self,
        image_paths: Sequence[str],
        ground_truth_paths: Sequence[str],
        normalization: Normalization | None = None,
        positive_class_sample_rate: float = 0.0,
        augmentation: AugmentationConfig | None = None,
        augmentation_probability: float = 0.0,
        crop_shape: Sequence[int] | None = None,
        seed: int = 0,
        *,
        n_chunk: int = 1,
    ):
        # n_chunk is accepted so the trainer can pass SliceTrainingDataset's arguments unchanged.
        if n_chunk != 1:
            raise UserInputError(f"--n_chunk {n_chunk}: 2-D RGB images take --n_chunk 1 (the 3 colour channels are the input)")
        if len(image_paths) != len(ground_truth_paths):
            raise ValueError("image and ground truth lists differ in length")
        self.image_paths = list(image_paths)
        self.ground_truth_paths = list(ground_truth_paths)
        self.scan_paths = self.image_paths  # the name SliceTrainingDataset uses
        self.normalization = normalization or Normalization("standard", [0.0] * 3, [1.0] * 3)
        if self.normalization.kind == "standard" and len(self.normalization.means) not in (1, 3):
            raise UserInputError(f"--dataset_means: give 1 or 3 values for RGB images, got {len(self.normalization.means)}")
        self.positive_class_sample_rate = positive_class_sample_rate
        self.augmentation = augmentation or AugmentationConfig()
        self.augmentation_probability = augmentation_probability
        self.crop_shape = tuple(crop_shape) if crop_shape else None
        self.seed = seed
        self.n_chunk = 1
        self.epoch = 0
        # Header reads only: validates every pair up front so a bad file fails before training starts.
        self.image_shapes = []
        for image_path, ground_truth_path in zip(self.image_paths, self.ground_truth_paths):
            image, mask = load_image(image_path), load_mask(ground_truth_path)
            check_label_size(mask, ground_truth_path, image.shape, image_path)
            self.image_shapes.append(tuple(image.shape[:2]))
        if self.crop_shape is None and len(set(self.image_shapes)) > 1:
            raise UserInputError(
                f"training images differ in size ({len(set(self.image_shapes))} sizes, e.g. {self.image_shapes[0]} in "
                f"{self.image_paths[0]}): give --crop_shape, or set up with --n_height/--n_width"
            )
        self._foreground: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose random draws the samples use."""
        self.epoch = epoch

    def pad_values(self) -> np.ndarray:
        """Raw per-channel values (3,) that normalise to 0, used to pad windows beyond the image."""
        if self.normalization.kind != "standard":
            return np.zeros(3, dtype=np.float32)
        return np.broadcast_to(np.asarray(self.normalization.means, dtype=np.float32), (3,)).copy()

    def foreground_pixels(self, index: int, mask: np.ndarray) -> np.ndarray:
        """(K, 2) row/column of the foreground pixels of image ``index``, cached per worker.

        Subsampled to at most 4096 pixels so the cache stays small; any of them serves as a crop centre.
        """
        if index not in self._foreground:
            pixels = np.argwhere(np.asarray(mask) > 0)
            if len(pixels) > 4096:
                pixels = pixels[np.linspace(0, len(pixels) - 1, 4096).astype(int)]
            self._foreground[index] = pixels
        return self._foreground[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image = load_image(self.image_paths[index])
        mask = load_mask(self.ground_truth_paths[index])
        height, width = image.shape[:2]
        if self.crop_shape is None:
            top, left, (crop_height, crop_width) = 0, 0, (height, width)
        else:
            crop_height, crop_width = self.crop_shape
            centre = None
            if self.positive_class_sample_rate > 0 and rng.random() < self.positive_class_sample_rate:
                pixels = self.foreground_pixels(index, mask)
                if len(pixels):
                    centre = pixels[rng.integers(len(pixels))]
            top = _window_start(height, crop_height, rng, None if centre is None else int(centre[0]))
            left = _window_start(width, crop_width, rng, None if centre is None else int(centre[1]))

        # Only the window is read from the memory-mapped file.
        window = np.asarray(image[top : top + crop_height, left : left + crop_width], dtype=np.float32)
        window_mask = np.asarray(mask[top : top + crop_height, left : left + crop_width]) > 0
        sample = np.empty((3, crop_height, crop_width), dtype=np.float32)
        sample[:] = self.pad_values()[:, None, None]
        sample[:, : window.shape[0], : window.shape[1]] = window.transpose(2, 0, 1)
        target = np.zeros((1, crop_height, crop_width), dtype=np.float32)
        target[0, : window_mask.shape[0], : window_mask.shape[1]] = window_mask

        # Augmentation works on raw (C, H, W) arrays, then normalisation and noise (as SliceTrainingDataset).
        augmented = rng.random() < self.augmentation_probability
        if augmented:
            sample, target = augment(sample, target, rng, self.augmentation)
        sample = self.normalization(sample).astype(np.float32, copy=False)
        if augmented:
            sample = add_noise(sample, rng, self.augmentation)
        return torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)), torch.from_numpy((target > 0.5).astype(np.float32))


def _window_start(size: int, crop: int, rng: np.random.Generator, centre: int | None) -> int:
    """Start of a ``crop``-long window in ``size``: uniform, or containing ``centre``; 0 if it does not fit."""
    if crop >= size:
        return 0
    low, high = 0, size - crop
    if centre is not None:
        low, high = max(low, centre - crop + 1), min(high, centre)
    return int(rng.integers(low, high + 1))
