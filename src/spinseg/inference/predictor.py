"""The one inference path: a batch of inputs, a whole volume, or a whole 2-D image -> probabilities.

Every caller (evaluate, predict, the trainer's validation, the benchmark) goes through
:func:`predict_batch`, the only place that normalises, autocasts, applies the sigmoid and the
optional test-time flip. :class:`InferenceOptions` says how: the plain path
(``prepare=False``: the model as trained, contiguous inputs) or the prepared one (batch norm
folded, channels-last, fused activations; :mod:`spinseg.acceleration.inference`), with or
without background skipping for volumes. Prepare a model once with :func:`prepare_for_inference`
and pass the prepared model to every call; :func:`predict_volume` prepares an unprepared one
itself (per call, so slower but still correct).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from spinseg.acceleration import inference as acceleration
from spinseg.data.images import resize_probabilities
from spinseg.data.transforms import Normalization
from spinseg.data.volumes import slice_window, stack_slices

# A voxel is lesion when its probability exceeds this; the background-skipping check uses it.
MASK_THRESHOLD = 0.5
# Set on models that prepare_for_inference made, so that predict_volume does not prepare them again.
PREPARED_ATTRIBUTE = "spinseg_prepared_for_inference"


@dataclass
class InferenceOptions:
    """How a model is run at inference, for volumes and 2-D images alike.

    ``prepare``: run a model prepared by :func:`prepare_for_inference` (batch norm folded,
    channels-last, fused activations; ``compile`` adds ``torch.compile``) on channels-last
    inputs; False runs the model as trained on contiguous inputs (the plain path). Both give
    the same probabilities within float rounding. ``skip_background`` (volumes): slices whose
    whole ``n_chunk`` window equals ``background_value`` get probability 0 without running the
    network, unless the network gives that window a probability >= ``threshold`` (then every
    slice is run), so the mask ``> threshold`` cannot change. ``amp``: bfloat16 autocast.
    ``batch_size`` 8 runs as fast per slice as 16 on full 197 x 233 slices with half the memory.
    """

    normalization: Normalization = field(default_factory=Normalization)
    n_chunk: int = 5
    batch_size: int = 8
    device: str | torch.device = "cpu"
    amp: bool = False
    test_time_flip: bool = False
    prepare: bool = True
    compile: bool = False
    skip_background: bool = False
    background_value: float = 0.0
    threshold: float = MASK_THRESHOLD


def prepare_for_inference(model: nn.Module, options: InferenceOptions) -> nn.Module:
    """The model to run under ``options``: a prepared eval-mode copy, or ``model`` itself in eval mode.

    With ``options.prepare`` (and a model not prepared yet) this is
    :func:`spinseg.acceleration.inference.prepare_inference_model`'s copy; call it once per model,
    not per volume. Without, the model is set to eval mode and returned as it is.
    """
    if not options.prepare or getattr(model, PREPARED_ATTRIBUTE, False):
        return model.eval()
    prepared = acceleration.prepare_inference_model(model, compile=options.compile)
    setattr(prepared, PREPARED_ATTRIBUTE, True)
    return prepared


@torch.inference_mode()
def predict_batch(model: nn.Module, inputs: torch.Tensor, options: InferenceOptions) -> np.ndarray:
    """Probabilities of a raw (un-normalised) CPU batch (B, C, H, W) -> float32 (B, H, W) in [0, 1].

    ``model`` is run as given: take it from :func:`prepare_for_inference` (eval mode, prepared or not).

    Normalised on the CPU, moved to ``options.device`` (channels-last for a prepared model),
    run under bf16 autocast when ``options.amp``; ``options.test_time_flip`` averages the sigmoid
    of the input and of its horizontally flipped copy (the release's ``average_flip``).
    """
    device = torch.device(options.device)
    inputs = options.normalization(inputs).float()
    if device.type == "cuda":
        inputs = inputs.pin_memory().to(device, non_blocking=True)
    else:
        inputs = inputs.to(device)
    if options.prepare:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.amp):
        output = torch.sigmoid(model(inputs).float())
        if options.test_time_flip:
            output = 0.5 * (output + torch.sigmoid(model(inputs.flip(-1)).float()).flip(-1))
    return output[:, 0].float().cpu().numpy()


def iterate_slice_batches(
    volume: np.ndarray, n_chunk: int, pad_value: float, batch_size: int, slice_indices: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (slice indices (b,), stacked inputs (b, n_chunk, H, W)) over the axial slices of (H, W, D)."""
    indices = np.arange(volume.shape[-1]) if slice_indices is None else np.asarray(slice_indices)
    for start in range(0, len(indices), batch_size):
        batch_indices = indices[start : start + batch_size]
        yield batch_indices, np.stack([stack_slices(volume, int(i), n_chunk, pad_value) for i in batch_indices])


def background_windows(volume: np.ndarray, n_chunk: int, pad_value: float, background_value: float) -> np.ndarray:
    """Which axial slices' whole input window is background: (H, W, D) -> (D,) bool.

    Slice i's window is :func:`spinseg.data.volumes.slice_window`'s; slices past the volume's ends are
    filled with ``pad_value``, so an end slice counts only when ``pad_value`` is itself background.
    Every such window is the same constant input, hence gives the same network output.
    """
    depth = volume.shape[-1]
    # One pass over the volume (read once, slice by slice along the memory-mapped last axis).
    slice_is_background = np.asarray(volume == background_value).reshape(-1, depth).all(axis=0)
    padding_is_background = pad_value == background_value
    windows = np.zeros(depth, dtype=bool)
    for index in range(depth):
        low, high = slice_window(index, n_chunk)
        if (low < 0 or high > depth) and not padding_is_background:
            continue
        windows[index] = slice_is_background[max(low, 0) : min(high, depth)].all()
    return windows


def slices_to_run(model: nn.Module, volume: np.ndarray, options: InferenceOptions, info: dict[str, Any]) -> np.ndarray:
    """Indices (d,) of the axial slices the network must run; records what was skipped in ``info``.

    Every skippable window is the same constant input, so its output is what the full run would
    give on every skipped slice: one forward decides whether skipping keeps the thresholded mask.
    """
    pad_value = options.normalization.pad_value()
    every_slice = np.arange(volume.shape[-1])
    if not options.skip_background:
        return every_slice
    skippable = background_windows(volume, options.n_chunk, pad_value, options.background_value)
    if not skippable.any():
        return every_slice
    window = stack_slices(volume, int(np.flatnonzero(skippable)[0]), options.n_chunk, pad_value)
    info["background_max_probability"] = float(predict_batch(model, torch.from_numpy(window[None]), options).max())
    if info["background_max_probability"] >= options.threshold:
        info["skip_disabled"] = (
            f"the model gives an all-background window probability up to "
            f"{info['background_max_probability']:.3f} >= {options.threshold}, so skipping would change the mask"
        )
        return every_slice
    info["slices_skipped"] = int(skippable.sum())
    return np.flatnonzero(~skippable)


def predict_volume(model: nn.Module, volume: np.ndarray, options: InferenceOptions) -> tuple[np.ndarray, dict[str, Any]]:
    """Lesion probabilities of a raw volume (H, W, D) -> ((H, W, D) float32 in [0, 1], info).

    Each axial slice is predicted from its ``options.n_chunk`` neighbours (padded past the ends
    with the value that normalises to 0) by :func:`predict_batch`. Skipped background slices
    (``options.skip_background``) get 0. ``info`` holds ``slices_skipped``, ``slices_run``,
    ``skip_disabled`` (why skipping was turned off, or ""), ``background_max_probability``
    (None when nothing was skippable) and ``seconds``.
    """
    start = time.perf_counter()
    model = prepare_for_inference(model, options)
    depth = volume.shape[-1]
    info: dict[str, Any] = {"slices_skipped": 0, "slices_run": depth, "skip_disabled": "", "background_max_probability": None}
    indices_to_run = slices_to_run(model, volume, options, info)
    info["slices_run"] = len(indices_to_run)
    # Slices first, so each batch's result is one contiguous block; moved to (H, W, D) once at the end.
    probabilities = np.zeros((depth,) + volume.shape[:2], dtype=np.float32)
    pad_value = options.normalization.pad_value()
    for indices, batch in iterate_slice_batches(volume, options.n_chunk, pad_value, options.batch_size, indices_to_run):
        probabilities[indices] = predict_batch(model, torch.from_numpy(batch), options)
    info["seconds"] = time.perf_counter() - start  # predict_batch's copy to the CPU waited for the device
    return np.ascontiguousarray(np.moveaxis(probabilities, 0, -1)), info


def predict_image(
    model: nn.Module, image: np.ndarray, options: InferenceOptions, output_shape: Sequence[int] | None = None
) -> np.ndarray:
    """Foreground probabilities of a raw RGB image (H, W, 3) -> float32 (H, W) in [0, 1].

    The whole image goes through the model at once (as the release does), by :func:`predict_batch`.
    ``output_shape`` (h, w) resizes the probabilities bilinearly, e.g. to the original size of an
    image the setup resized, before thresholding.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    model = prepare_for_inference(model, options)
    inputs = torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)))[None]
    probabilities = predict_batch(model, inputs, options)[0]
    if output_shape is not None:
        probabilities = resize_probabilities(probabilities, output_shape)
    return probabilities.astype(np.float32, copy=False)
