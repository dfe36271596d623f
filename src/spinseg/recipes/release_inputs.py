"""Array side of the release presets: a volume to each method's model inputs, masks to its scoring grid.

Volumes are ours, (H, W, D) with the axial axis last (ATLAS: 197 x 233 x 189). A preset
(:class:`spinseg.recipes.release_presets.ReleasePreset`) says how the release prepared each slice;
:func:`model_inputs` returns (D, C, h, w) float32 for the model, :func:`ground_truth_on_grid` the ground
truth on the grid the release scored on, (h, w, D), and :func:`mask_from_probabilities` thresholds
the model's probabilities (D, h, w) as the release did and returns them on that grid.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from spinseg.recipes import release_presets as presets
from spinseg.recipes.release_presets import ReleasePreset

_RESAMPLE = {"lanczos": Image.LANCZOS, "nearest": Image.NEAREST}


def release_slices(volume: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """(H, W, D) -> (D, rows, columns): the slices as the release indexed them (transposed if it did)."""
    slices = np.moveaxis(np.asarray(volume), -1, 0)
    return slices.transpose(0, 2, 1) if preset.transposed else slices


def crop_slices(slices: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """(D, rows, columns) -> the preset's crop of every slice (unchanged without one)."""
    rows = slice(*preset.crop_rows) if preset.crop_rows else slice(None)
    columns = slice(*preset.crop_columns) if preset.crop_columns else slice(None)
    return slices[:, rows, columns]


def resize_uint8_slices(slices: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """(D, h, w) uint8 -> (D, *preset.resize) uint8 with PIL's filter, as the release's scripts did."""
    if preset.resize is None:
        return slices
    height, width = preset.resize
    resample = _RESAMPLE[preset.resample]
    # PIL sizes are (width, height).
    return np.stack([np.asarray(Image.fromarray(one).resize((width, height), resample)) for one in slices])


def dunet_uint8_grid(slices: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """D-UNet before its min-max: uint8(T1 * 2.55), crop, Lanczos resize -> (D, 192, 192) float64 in [0, 255]."""
    # float64 as nibabel's get_fdata gave the release; values above 100 wrap in the uint8 cast there too.
    as_uint8 = np.multiply(slices.astype(np.float64), 2.55).astype(np.uint8)
    return resize_uint8_slices(crop_slices(as_uint8, preset), preset).astype(np.float64)


def dunet_range(volume: np.ndarray, preset: ReleasePreset) -> tuple[float, float]:
    """(min, max) of a whole (H, W, D) volume's :func:`dunet_uint8_grid`: D-UNet's per-patient min-max."""
    grid = dunet_uint8_grid(release_slices(volume, preset), preset)
    return float(grid.min()), float(grid.max())


def dunet_intensities(slices: np.ndarray, preset: ReleasePreset, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """D-UNet: :func:`dunet_uint8_grid`, then per-patient min-max -> (D, 192, 192) in [0, 1].

    ``value_range``: the patient's (min, max) when ``slices`` are only some of its slices (training samples).
    """
    resized = dunet_uint8_grid(slices, preset)
    low, high = value_range if value_range is not None else (resized.min(), resized.max())
    resized -= low
    peak = high - low
    # An all-zero volume would divide by zero (NaN in the release); it stays zero here.
    return resized / peak if peak > 0 else resized


def kiunet_intensities(slices: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """KiU-Net: per slice uint8((x - min) / max * 255) of T1 / 100, NEAREST resize, / 255 -> (D, 128, 128)."""
    scaled = slices.astype(np.float64) / 100.0
    minimum = scaled.min(axis=(1, 2), keepdims=True)
    maximum = scaled.max(axis=(1, 2), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        # The release divides by the maximum, not the range; an empty slice gives NaN, which its uint8 cast makes 0.
        normalised = np.nan_to_num((scaled - minimum) / maximum * 255.0, nan=0.0, posinf=0.0, neginf=0.0)
    as_uint8 = normalised.astype(np.uint8)
    return resize_uint8_slices(crop_slices(as_uint8, preset), preset).astype(np.float64) / 255.0


def prepared_slices(volume: np.ndarray, preset: ReleasePreset, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W, D) -> (D, h, w) float64: every slice prepared as the release prepared it, before stacking.

    ``value_range``: D-UNet's per-patient (min, max) (:func:`dunet_range`) when ``volume`` holds only some
    of the patient's slices; None computes it from ``volume``.
    """
    slices = release_slices(volume, preset)
    if preset.intensity == presets.DUNET_UINT8:
        return dunet_intensities(slices, preset, value_range)
    if preset.intensity == presets.KIUNET_SLICE_UINT8:
        return kiunet_intensities(slices, preset)
    cropped = crop_slices(slices.astype(np.float64), preset)
    if preset.intensity == presets.DIVIDE_BY_100:
        return cropped / 100.0
    if preset.intensity == presets.ZSCORE:
        statistics = presets.ZSCORE_STATISTICS
        return (cropped - statistics["mean"]) / statistics["std"]
    raise ValueError(f"unknown intensity preparation {preset.intensity!r}")


def stack_channels(prepared: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """(D, h, w) -> (D, n_slices, h, w): channel j of slice i is slice i + j - offset, filled beyond the volume.

    Centred stacks (SPiN, U-Net) use offset (n - 1) / 2 and fill with the normalised dataset mean (0 after
    the z-score); D-UNet's stack of 4 uses offset 2 (slices i-2 .. i+1) and fills with zeros.
    """
    depth = prepared.shape[0]
    count = preset.n_slices
    offset = stack_offset(preset)
    # After the z-score the dataset mean is 0, so both fills are zeros in the prepared units.
    stacked = np.zeros((depth, count) + prepared.shape[1:], dtype=np.float32)
    for channel in range(count):
        shift = channel - offset
        source = slice(max(shift, 0), depth + min(shift, 0))
        target = slice(max(-shift, 0), depth - max(shift, 0))
        stacked[target, channel] = prepared[source]
    return stacked


def stack_offset(preset: ReleasePreset) -> int:
    """How many slices below the target a stack starts: (n - 1) / 2 centred, else n / 2 (D-UNet: i-2 .. i+1)."""
    return (preset.n_slices - 1) // 2 if preset.centred_slices else preset.n_slices // 2


def model_inputs(volume: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """A raw (H, W, D) volume -> (D, C, h, w) float32 model inputs, one per axial slice."""
    return stack_channels(prepared_slices(volume, preset), preset)


def slice_model_input(volume: np.ndarray, index: int, preset: ReleasePreset,
                      value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``model_inputs(volume, preset)[index]``, (C, h, w) float32, reading only the slices it stacks.

    D-UNet's min-max needs the whole patient: pass ``value_range`` (:func:`dunet_range`), computed once
    per volume, or it is computed here from the whole volume.
    """
    depth, offset = volume.shape[-1], stack_offset(preset)
    low, high = max(index - offset, 0), min(index - offset + preset.n_slices, depth)
    if preset.intensity == presets.DUNET_UINT8 and value_range is None:
        value_range = dunet_range(volume, preset)
    window = prepared_slices(np.asarray(volume[..., low:high]), preset, value_range)
    stacked = np.zeros((preset.n_slices,) + window.shape[1:], dtype=np.float32)
    stacked[low - (index - offset) : high - (index - offset)] = window  # zeros beyond the volume, as stack_channels
    return stacked


def ground_truth_on_grid(ground_truth: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """Binary (H, W, D) ground truth -> (h, w, D) bool on the grid the release scored the method on."""
    slices = release_slices(np.asarray(ground_truth) > 0, preset)
    cropped = crop_slices(slices.astype(np.uint8), preset)
    # The release resized 0/1 (D-UNet) or 0/255 (KiU-Net) uint8 masks; any non-zero pixel is lesion.
    resized = resize_uint8_slices(cropped, preset) > 0
    return np.moveaxis(resized, 0, -1)


def mask_from_probabilities(probabilities: np.ndarray, preset: ReleasePreset) -> np.ndarray:
    """(D, h, w) lesion probabilities -> (h, w, D) bool mask thresholded as the release did."""
    if preset.threshold_inclusive:
        mask = probabilities >= preset.threshold
    else:
        mask = probabilities > preset.threshold
    return np.moveaxis(mask, 0, -1)
