"""The learning rate on a plateau of the validation loss, and early stopping (X-Net's and CLCI-Net's release).

The release compiles both Keras models with ``ReduceLROnPlateau(monitor='val_loss', factor=0.2,
min_delta=1e-3, patience=3)`` and ``EarlyStopping(monitor='val_loss', min_delta=0, patience=5)``
(``X-Net/main.py:40-41``, ``CLCI-Net/main.py:46-47``), both judged at the end of every epoch. Here they
are judged at every validation (``--validation_epochs`` places those at the release's epochs) on the
recipe's own loss over every validation slice, as Keras's ``val_loss`` was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from spinseg.data.volumes import check_same_shape, load_volume
from spinseg.inference.predictor import iterate_slice_batches


def watches_validation_loss(config) -> bool:
    """Whether the run's schedule or stopping depends on the validation loss (a ``TrainConfig``)."""
    return config.lr_schedule == "plateau" or config.early_stopping_patience > 0


def build_plateau_scheduler(optimizer: torch.optim.Optimizer, config) -> ReduceLROnPlateau | None:
    """torch's ``ReduceLROnPlateau`` set as Keras's was, for ``--lr_schedule plateau``; else None.

    Keras reduces once ``patience`` validations in a row failed to improve (``wait >= patience``),
    torch once more than ``patience`` did (``num_bad_epochs > patience``): torch's patience is one
    less. Keras's ``min_delta`` is absolute (improved: loss < best - min_delta), its ``min_lr`` 0 and
    every reduction applies (torch's ``eps`` 0).
    """
    if config.lr_schedule != "plateau":
        return None
    return ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience - 1,
                             threshold=config.plateau_min_delta, threshold_mode="abs", cooldown=0, min_lr=0.0, eps=0.0)


@dataclass
class EarlyStopping:
    """Keras's ``EarlyStopping(min_delta=0)``: stop after ``patience`` validations without a lower loss (0: never)."""

    patience: int
    best: float = math.inf
    wait: int = 0

    def update(self, loss: float) -> bool:
        """Records one validation loss; True when training should stop now."""
        if loss < self.best:
            self.best, self.wait = loss, 0
            return False
        self.wait += 1
        return 0 < self.patience <= self.wait


def volume_batches(scan: np.ndarray, mask: np.ndarray, config, normalization):
    """Yields (inputs (b, C, H, W), targets (b, 1, H, W)) float32 tensors over every axial slice of a
    volume, as the trainer's inputs are made (stacked, normalised), ``config.val_batch_size`` at a time."""
    pad_value = normalization.pad_value()
    for indices, batch in iterate_slice_batches(scan, config.n_chunk, pad_value, config.val_batch_size):
        targets = (np.moveaxis(np.asarray(mask[..., indices]), -1, 0) > 0).astype(np.float32)[:, None]
        yield torch.from_numpy(normalization(batch).astype(np.float32, copy=False)), torch.from_numpy(targets)


@torch.inference_mode()
def validation_loss(model: torch.nn.Module, scan_paths, ground_truth_paths, config, normalization, loss_function,
                    device: torch.device, batches=volume_batches) -> float:
    """The recipe's loss over every validation slice: the mean of the per-batch losses weighted by
    batch size, as Keras's ``val_loss`` averaged its validation batches. ``model`` is left in eval mode."""
    model.eval()
    total, count = 0.0, 0
    for scan_path, ground_truth_path in zip(scan_paths, ground_truth_paths):
        scan, mask = load_volume(scan_path), load_volume(ground_truth_path)
        check_same_shape(scan, scan_path, mask, ground_truth_path)
        for inputs, targets in batches(scan, mask, config, normalization):
            logits = model(inputs.to(device)).float()
            total += float(loss_function(logits, targets.to(device))) * len(inputs)
            count += len(inputs)
    return total / max(count, 1)
