"""Training and validation inputs prepared as a release preset prepares them (``--release_inputs NAME``).

A release recipe trains its baseline on what the release fed it: the fixed window of the transposed
slice (X-Net [5:229, 2:194], CLCI-Net [5:229, 11:187]), D-UNet's uint8 crop, Lanczos resize and per-patient
min-max, KiU-Net's per-slice uint8 and 128 x 128 nearest resize, and each method's slice stack. The arrays
come from :mod:`spinseg.recipes.release_inputs`, the functions ``evaluate --preset`` uses, so a model
trained this way is evaluated with ``--preset NAME`` on exactly its training preparation.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from spinseg.data.slices import SliceTrainingDataset
from spinseg.data.transforms import Normalization, add_noise, augment
from spinseg.data.volumes import check_same_shape, load_volume
from spinseg.evaluation.metrics import mean_over_subjects, release_metrics
from spinseg.evaluation.release_evaluation import preset_probabilities
from spinseg.recipes import release_presets
from spinseg.recipes.release_inputs import (
    dunet_range,
    ground_truth_on_grid,
    mask_from_probabilities,
    model_inputs,
    slice_model_input,
)


class ReleaseSliceTrainingDataset(SliceTrainingDataset):
    """Item i -> (the preset's model input for one slice of volume i (C, h, w), its ground truth on the
    preset's grid (1, h, w)), float32.

    The slice is drawn as :class:`SliceTrainingDataset` draws it; there is no random crop and no
    normalisation (the preset's window and intensity scaling replace both). The recipe's augmentation
    applies to the prepared arrays, whose background is 0 as the raw scans' is.
    """

    def __init__(self, scan_paths: Sequence[str], ground_truth_paths: Sequence[str], preset_name: str, **settings):
        self.preset = release_presets.preset(preset_name)
        settings.update(n_chunk=self.preset.n_slices, normalization=Normalization("none"), crop_shape=None)
        super().__init__(scan_paths, ground_truth_paths, **settings)
        self._value_ranges: dict[int, tuple[float, float]] = {}

    def value_range(self, index: int, scan: np.ndarray) -> tuple[float, float] | None:
        """D-UNet's per-patient (min, max), computed once per volume and worker; None for the others."""
        if self.preset.intensity != release_presets.DUNET_UINT8:
            return None
        if index not in self._value_ranges:
            self._value_ranges[index] = dunet_range(scan, self.preset)
        return self._value_ranges[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        scan, mask = self.open_pair(index)
        slice_index, _ = self.choose_slice(index, mask, rng)
        image = slice_model_input(scan, slice_index, self.preset, self.value_range(index, scan))
        truth = ground_truth_on_grid(np.asarray(mask[..., slice_index : slice_index + 1]), self.preset)
        target = np.moveaxis(truth, -1, 0).astype(np.float32)
        if rng.random() < self.augmentation_probability:
            image, target = augment(image, target, rng, self.augmentation)
            image = add_noise(image.astype(np.float32, copy=False), rng, self.augmentation)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy((target > 0.5).astype(np.float32))


def release_volume_batches(scan: np.ndarray, mask: np.ndarray, config, normalization=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs (b, C, h, w), targets (b, 1, h, w)) over every slice of a volume as ``config.release_inputs``
    prepares them, ``config.val_batch_size`` at a time (``normalization`` is unused: the preset scales)."""
    preset = release_presets.preset(config.release_inputs)
    inputs = model_inputs(np.asarray(scan), preset)
    targets = np.moveaxis(ground_truth_on_grid(np.asarray(mask) > 0, preset), -1, 0).astype(np.float32)[:, None]
    for start in range(0, len(inputs), config.val_batch_size):
        stop = start + config.val_batch_size
        yield torch.from_numpy(inputs[start:stop]), torch.from_numpy(targets[start:stop])


def release_validation_metrics(model: torch.nn.Module, scan_paths, ground_truth_paths, config, device) -> dict:
    """Release metrics per validation subject on the preset's grid, as ``evaluate --preset`` scores them,
    averaged over subjects. ``model`` is left in eval mode."""
    preset = release_presets.preset(config.release_inputs)
    model.eval()
    records = []
    for scan_path, ground_truth_path in zip(scan_paths, ground_truth_paths):
        scan, mask = load_volume(scan_path), load_volume(ground_truth_path)
        check_same_shape(scan, scan_path, mask, ground_truth_path)
        probabilities = preset_probabilities(model, model_inputs(np.asarray(scan), preset), config.val_batch_size, device)
        records.append(release_metrics(ground_truth_on_grid(np.asarray(mask) > 0, preset),
                                       mask_from_probabilities(probabilities, preset)))
    return mean_over_subjects(records)
