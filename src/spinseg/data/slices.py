"""The 2.5-D slice dataset: one training sample = one volume with one axial slice drawn from it.

As in the release, an epoch is one pass over the training *volumes*; for each volume a slice that
contains lesion is drawn with probability ``positive_class_sample_rate``, else any slice. The input
is ``n_chunk`` adjacent slices stacked as channels. Volumes are memory-mapped, so a sample reads
only its ``n_chunk`` slices, and memory does not grow with the number of subjects.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from spinseg.data.transforms import AugmentationConfig, Normalization, add_noise, augment
from spinseg.data.volumes import check_same_shape, lesion_slice_indices, load_volume, stack_slices


def crop_window(
    shape: Sequence[int], crop_shape: Sequence[int], rng: np.random.Generator, centre: Sequence[int] | None
) -> tuple[int, int]:
    """Top-left corner of a ``crop_shape`` window in an image of ``shape`` (H, W).

    With ``centre`` the window contains that pixel at a random position (so a lesion is inside);
    otherwise the window is uniformly random. Windows larger than the image start at 0.
    """
    corner = []
    for size, crop, middle in zip(shape, crop_shape, centre if centre is not None else (None, None)):
        if crop >= size:
            corner.append(0)
            continue
        low, high = 0, size - crop
        if middle is not None:
            low, high = max(low, middle - crop + 1), min(high, middle)
        corner.append(int(rng.integers(low, high + 1)))
    return corner[0], corner[1]


def crop_or_pad(array: np.ndarray, top: int, left: int, crop_shape: Sequence[int], pad_value: float) -> np.ndarray:
    """Cuts (C, crop_h, crop_w) out of (C, H, W) at (top, left), padding with ``pad_value`` if needed."""
    channels = array.shape[0]
    out = np.full((channels,) + tuple(crop_shape), pad_value, dtype=array.dtype)
    window = array[:, top : top + crop_shape[0], left : left + crop_shape[1]]
    out[:, : window.shape[1], : window.shape[2]] = window
    return out


class SliceTrainingDataset(Dataset):
    """Training samples from 3-D volumes: item i -> (image (n_chunk, H, W), mask (1, H, W)), float32.

    Randomness comes from ``np.random.default_rng((seed, epoch, index))``, so a sample depends only
    on (seed, epoch, index): runs are reproducible with any number of workers and after a resume.
    ``augmentation_probability`` and ``positive_class_sample_rate`` may be changed between epochs.
    """

    def __init__(
        self,
        scan_paths: Sequence[str],
        ground_truth_paths: Sequence[str],
        n_chunk: int = 5,
        normalization: Normalization | None = None,
        positive_class_sample_rate: float = 0.95,
        augmentation: AugmentationConfig | None = None,
        augmentation_probability: float = 0.0,
        crop_shape: Sequence[int] | None = None,
        seed: int = 0,
    ):
        if len(scan_paths) != len(ground_truth_paths):
            raise ValueError("scan and ground truth lists differ in length")
        if n_chunk < 1:
            raise ValueError(f"n_chunk must be >= 1, got {n_chunk}")
        self.scan_paths = list(scan_paths)
        self.ground_truth_paths = list(ground_truth_paths)
        self.n_chunk = n_chunk
        self.normalization = normalization or Normalization()
        self.positive_class_sample_rate = positive_class_sample_rate
        self.augmentation = augmentation or AugmentationConfig()
        self.augmentation_probability = augmentation_probability
        self.crop_shape = tuple(crop_shape) if crop_shape else None
        self.seed = seed
        self.epoch = 0
        self._lesion_slices: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.scan_paths)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose random draws the samples use."""
        self.epoch = epoch

    def open_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Memory-maps volume ``index`` and its ground truth, checking that their shapes agree."""
        scan = load_volume(self.scan_paths[index])
        mask = load_volume(self.ground_truth_paths[index])
        check_same_shape(scan, self.scan_paths[index], mask, self.ground_truth_paths[index])
        return scan, mask

    def lesion_slices(self, index: int, mask: np.ndarray) -> np.ndarray:
        """Slices of volume ``index`` holding lesion, computed once per worker and cached (tiny)."""
        if index not in self._lesion_slices:
            self._lesion_slices[index] = lesion_slice_indices(mask)
        return self._lesion_slices[index]

    def choose_slice(self, index: int, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, bool]:
        """(axial slice of volume ``index`` to train on, whether it was drawn among the lesion slices)."""
        positives = self.lesion_slices(index, mask)
        use_positive = len(positives) > 0 and rng.random() < self.positive_class_sample_rate
        slice_index = int(rng.choice(positives)) if use_positive else int(rng.integers(mask.shape[-1]))
        return slice_index, use_positive

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        scan, mask = self.open_pair(index)
        slice_index, use_positive = self.choose_slice(index, mask, rng)

        image = stack_slices(scan, slice_index, self.n_chunk, self.normalization.pad_value())
        target = (np.asarray(mask[..., slice_index]) > 0).astype(np.float32)[None]
        if self.crop_shape is not None:
            lesion_pixels = np.argwhere(target[0] > 0)
            centre = tuple(lesion_pixels[rng.integers(len(lesion_pixels))]) if use_positive and len(lesion_pixels) else None
            top, left = crop_window(target.shape[1:], self.crop_shape, rng, centre)
            image = crop_or_pad(image, top, left, self.crop_shape, self.normalization.pad_value())
            target = crop_or_pad(target, top, left, self.crop_shape, 0.0)

        augmented = rng.random() < self.augmentation_probability
        if augmented:
            image, target = augment(image, target, rng, self.augmentation)
        image = self.normalization(image).astype(np.float32, copy=False)
        if augmented:
            image = add_noise(image, rng, self.augmentation)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy((target > 0.5).astype(np.float32))
