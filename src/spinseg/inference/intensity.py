"""Intensity safety: compare a scan's brain intensities with the training data's, and optionally standardise.

A network trained on ATLAS R1.2 sees ``(x - mean) / std`` with the training data's mean and std
(from the checkpoint). A scan in other units (a scanner's, x8 or x12 ATLAS's) is normalised into a
range the network never saw and gives a confident-looking wrong mask. So, on the template grid
(after resampling or registration) and inside the template's brain mask:

* the scan's robust brain percentiles (``PERCENTILES``) are compared with the training data's;
  the factor that maps one onto the other (least squares through 0, so the background stays 0 as
  in training) is the scan's **intensity ratio**;
* ``--intensity check`` (default without ``--register``) leaves the scan as it is and warns when
  the ratio is beyond ``FAR_OFF_RATIO`` either way, saying what to do;
* ``--intensity standardize`` (default with ``--register``) multiplies the scan by that factor.

The training data's brain percentiles are not stored in checkpoints, and ATLAS is not shipped;
they are estimated as the percentiles, inside the brain mask, of the whole-head MNI152 template
(:func:`spinseg.inference.registration.template_volumes`) scaled so that its whole-volume mean
and std match the checkpoint's normalisation (the same calibration that makes the synthetic
ATLAS resemble ATLAS R1.2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinseg.constants import ATLAS_MEAN, ATLAS_STD

PERCENTILES = (25.0, 50.0, 75.0, 90.0)
# ATLAS scans differ among themselves by well under this factor; beyond it the network is off its training range.
FAR_OFF_RATIO = 1.5
INTENSITY_MODES = ("check", "standardize")


@dataclass(frozen=True)
class IntensityResult:
    """What :func:`apply_intensity_policy` found and did (``scale`` = 1 when nothing was changed)."""

    mode: str
    ratio: float | None  # training percentiles / scan percentiles (None: no brain voxels to judge)
    scale: float
    scan_percentiles: list[float]
    training_percentiles: list[float]
    warning: str | None

    def summary(self) -> dict:
        """JSON-ready figures for the scan's report."""
        return {
            "mode": self.mode,
            "ratio_to_training": None if self.ratio is None else round(self.ratio, 5),
            "scale_applied": round(self.scale, 6),
            "brain_percentiles": dict(zip((f"p{p:g}" for p in PERCENTILES), self.scan_percentiles)),
            "training_brain_percentiles": dict(zip((f"p{p:g}" for p in PERCENTILES), self.training_percentiles)),
        }


def training_statistics(normalization) -> tuple[float, float]:
    """(mean, std) of the training data in raw units: the checkpoint's, or ATLAS's for an un-normalised model."""
    if normalization.kind == "standard":
        return float(normalization.means[0]), float(normalization.stddevs[0])
    return ATLAS_MEAN, ATLAS_STD


def training_brain_percentiles(normalization, template_head: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Estimated brain percentiles (len(PERCENTILES),) of the training data in raw units (see module docstring)."""
    mean, std = training_statistics(normalization)
    mean_ratio, std_ratio = float(template_head.mean()) / mean, float(template_head.std()) / std
    # Least-squares factor k with k * head mean ~ mean and k * head std ~ std (relative errors).
    factor = (mean_ratio + std_ratio) / (mean_ratio**2 + std_ratio**2)
    return factor * np.percentile(template_head[brain], PERCENTILES)


def ratio_to_training(scan_percentiles: np.ndarray, training_percentiles: np.ndarray) -> float | None:
    """Factor s minimising ||s * scan - training|| over the percentiles (None when the scan's are all 0)."""
    denominator = float(np.dot(scan_percentiles, scan_percentiles))
    if denominator <= 0:
        return None
    return float(np.dot(scan_percentiles, training_percentiles)) / denominator


def apply_intensity_policy(volume: np.ndarray, brain: np.ndarray, template_head: np.ndarray, normalization,
                           mode: str, name="input") -> tuple[np.ndarray, IntensityResult]:
    """Checks (and with ``mode="standardize"`` rescales) a (X, Y, Z) volume on the template grid.

    ``brain``: (X, Y, Z) bool template brain mask; ``template_head``: the template on the same grid.
    Returns (the volume to segment, :class:`IntensityResult`); the result's ``warning`` is set when
    an unstandardised scan is far off the training range.
    """
    if mode not in INTENSITY_MODES:
        raise ValueError(f"intensity mode {mode!r} not in {INTENSITY_MODES}")
    training = training_brain_percentiles(normalization, template_head, brain)
    scan = np.percentile(volume[brain], PERCENTILES) if brain.any() else np.zeros(len(PERCENTILES))
    ratio = ratio_to_training(scan, training)
    scale, warning = 1.0, None
    if mode == "standardize" and ratio is not None and ratio > 0:
        scale = ratio
        volume = (volume * np.float32(scale)).astype(np.float32)
    elif ratio is not None and not 1 / FAR_OFF_RATIO <= ratio <= FAR_OFF_RATIO:
        warning = (f"{name}: brain intensities are {1 / ratio:.3g}x the training data's (median {scan[1]:.4g} vs "
                   f"{training[1]:.4g}), far outside what the network saw; its mask is not reliable. Rerun with "
                   "--intensity standardize (the default with --register)")
    return volume, IntensityResult(mode, ratio, scale, [round(float(v), 4) for v in scan],
                                   [round(float(v), 4) for v in training], warning)
