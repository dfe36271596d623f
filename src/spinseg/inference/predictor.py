"""Running a trained 2.5-D model over whole volumes."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn

from spinseg.data.transforms import Normalization
from spinseg.data.volumes import stack_slices


def iterate_slice_batches(
    volume: np.ndarray, n_chunk: int, pad_value: float, batch_size: int, slice_indices: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (slice indices (b,), stacked inputs (b, n_chunk, H, W)) over the axial slices of (H, W, D)."""
    indices = np.arange(volume.shape[-1]) if slice_indices is None else np.asarray(slice_indices)
    for start in range(0, len(indices), batch_size):
        batch_indices = indices[start : start + batch_size]
        yield batch_indices, np.stack([stack_slices(volume, int(i), n_chunk, pad_value) for i in batch_indices])


@torch.inference_mode()
def predict_volume(
    model: nn.Module,
    volume: np.ndarray,
    n_chunk: int,
    normalization: Normalization,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    test_time_flip: bool = False,
    amp: bool = False,
) -> np.ndarray:
    """Lesion probabilities for a raw volume (H, W, D) -> (H, W, D) float32 in [0, 1].

    ``test_time_flip`` averages the sigmoid of the slice and of its horizontally flipped copy
    (the release's ``average_flip``). ``amp`` runs in bfloat16 autocast.
    """
    model.eval()
    device = torch.device(device)
    probabilities = np.zeros(volume.shape, dtype=np.float32)
    for indices, batch in iterate_slice_batches(volume, n_chunk, normalization.pad_value(), batch_size):
        inputs = normalization(torch.from_numpy(batch)).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            output = torch.sigmoid(model(inputs).float())
            if test_time_flip:
                output = 0.5 * (output + torch.sigmoid(model(inputs.flip(-1)).float()).flip(-1))
        probabilities[..., indices] = np.moveaxis(output[:, 0].float().cpu().numpy(), 0, -1)
    return probabilities
