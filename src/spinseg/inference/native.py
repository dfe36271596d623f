"""One scan as it comes off the scanner -> mask, probabilities, lesion table (and MNI-space outputs).

With ``register`` the scan is affinely registered to the MNI152 2009 template
(:mod:`spinseg.inference.registration`), resampled through the transform onto the template grid,
checked or standardised (:mod:`spinseg.inference.intensity`), segmented there, and the
probabilities are brought back onto the scan's own grid with the inverse transform and
thresholded there. Without ``register`` the scan goes through :func:`spinseg.inference.scan.predict_scan`
unchanged (resampled in world coordinates, with its "does not look registered" warning); only the
intensity check (and, if asked, a global rescaling, which commutes with the linear resampling) is
added before it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import nibabel as nib
import numpy as np

from spinseg.data.transforms import Normalization
from spinseg.inference import intensity, registration, scan
from spinseg.inference.lesion_report import lesion_table
from spinseg.inference.predictor import InferenceOptions, predict_volume
from spinseg.inference.scan import (
    Grid,
    input_geometry,
    lesion_statistics,
    output_image,
    predict_scan,
    resample_linear,
    scan_data,
)


@dataclass(frozen=True)
class PredictSettings:
    """How every scan of a run is segmented (the predict command's flags)."""

    n_chunk: int
    normalization: Normalization
    threshold: float = 0.5
    batch_size: int = 8
    device: str = "cpu"
    test_time_flip: bool = False
    amp: bool = False
    register: bool = False
    intensity: str | None = None  # None: "standardize" with register, else "check"
    save_probability: bool = False
    save_mni: bool = False
    qc_lesions: int = 6
    prepare: bool = True  # the model is prepared for inference (prepare_for_inference); False: the plain path

    def inference_options(self) -> InferenceOptions:
        """The options of the one inference path (:mod:`spinseg.inference.predictor`) for these settings."""
        return InferenceOptions(normalization=self.normalization, n_chunk=self.n_chunk, batch_size=self.batch_size,
                                device=self.device, amp=self.amp, test_time_flip=self.test_time_flip, prepare=self.prepare,
                                threshold=self.threshold)

    @property
    def intensity_mode(self) -> str:
        """The intensity policy in force."""
        return self.intensity or ("standardize" if self.register else "check")


@dataclass
class NativePrediction:
    """A segmented scan: images on the scan's grid, the report, the lesion rows and, with
    registration, the transform and the template-grid mask/probabilities (for ``--save_mni``)."""

    mask_image: nib.Nifti1Image
    probability_image: nib.Nifti1Image
    report: dict
    lesions: list[dict]
    registration: registration.Registration | None = None
    template_images: dict = field(default_factory=dict)


def segment_template(model, volume: np.ndarray, settings: PredictSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, Y, Z) raw volume on the template grid -> (probabilities (X, Y, Z), both-pass minimum or None).

    With test-time flip the two passes (plain, slices flipped along their last axis) are run
    apart, so that their minimum says where both found a lesion; their mean is what
    ``predict_volume`` with ``test_time_flip`` returns.
    """
    # Every slice is run: probabilities, not a 0.5 mask, are resampled and thresholded later.
    options = replace(settings.inference_options(), skip_background=False, test_time_flip=False)

    def run(values: np.ndarray) -> np.ndarray:
        probabilities, _ = predict_volume(model, values, options)
        return probabilities

    plain = run(volume)
    if not settings.test_time_flip:
        return plain, None
    flipped = run(np.ascontiguousarray(volume[:, ::-1, :]))[:, ::-1, :]
    return (0.5 * (plain + flipped)).astype(np.float32), np.minimum(plain, flipped)


def predict_native(model, image: nib.Nifti1Image, settings: PredictSettings, name="input", template: Grid | None = None,
                   warn=None) -> NativePrediction:
    """Segments one T1 image of any grid (see the module docstring); ``warn(message)`` gets warnings."""
    template = template or scan.template_grid()  # looked up at call time: tests swap in a coarse grid
    if settings.register:
        return _predict_registered(model, image, settings, name, template, warn)
    data = scan_data(image, name)
    grid = Grid(data.shape, np.asarray(image.affine, dtype=float))
    head, brain = registration.template_volumes(registration.working_grid(template))
    on_template = data if grid.matches(template) else resample_linear(data, grid.affine, template)
    _, checked = intensity.apply_intensity_policy(registration.on_working_grid(on_template, template), brain, head,
                                                  settings.normalization, settings.intensity_mode, name)
    if checked.warning and warn is not None:
        warn(checked.warning)
    if checked.scale != 1.0:
        image = nib.Nifti1Image((data * np.float32(checked.scale)).reshape(image.shape), image.affine, image.header)
        image.header.set_slope_inter(None, None)
    mask_image, probability_image, report = predict_scan(
        model, image, settings.inference_options(), settings.threshold, name=name, template=template, warn=warn,
    )
    mask = np.asarray(mask_image.dataobj).reshape(data.shape)
    probabilities = np.asarray(probability_image.dataobj).reshape(data.shape)
    report.update(registered=False, intensity=checked.summary())
    return NativePrediction(mask_image, probability_image, report, lesion_table(mask, probabilities, grid.affine))


def _predict_registered(model, image, settings: PredictSettings, name, template: Grid, warn) -> NativePrediction:
    """The ``register`` path of :func:`predict_native`."""
    data = scan_data(image, name)
    grid = Grid(data.shape, np.asarray(image.affine, dtype=float))
    result = registration.register_to_template(data, grid.affine, template, name)
    head, brain = registration.template_volumes(registration.working_grid(template))
    on_template = registration.to_template(data, grid.affine, result, template)
    # The statistics come from the working grid's points (every 2nd voxel at 1 mm); the scale applies to all.
    _, checked = intensity.apply_intensity_policy(registration.on_working_grid(on_template, template), brain, head,
                                                  settings.normalization, settings.intensity_mode, name)
    on_template = (on_template * np.float32(checked.scale)).astype(np.float32)
    if checked.warning and warn is not None:
        warn(checked.warning)
    template_probabilities, both_minimum = segment_template(model, on_template, settings)
    back = registration.from_template(template_probabilities, template, result, data.shape, grid.affine)
    probabilities = np.clip(back, 0.0, 1.0).astype(np.float32)
    mask = (probabilities > settings.threshold).astype(np.uint8)
    both_passes = None
    if both_minimum is not None:
        both_passes = registration.from_template(both_minimum, template, result, data.shape, grid.affine) > settings.threshold
    report = {
        **input_geometry(image, grid, template),
        "registered": True,
        "registration": result.summary(),
        "intensity": checked.summary(),
        "threshold": float(settings.threshold),
        "test_time_flip": bool(settings.test_time_flip),
        "n_chunk": int(settings.n_chunk),
        **lesion_statistics(mask, grid.affine),
    }
    rows = lesion_table(mask, probabilities, grid.affine, lambda points: registration.scan_to_template_mm(result, points),
                        both_passes)
    prediction = NativePrediction(
        output_image(mask.reshape(image.shape), image, "spinseg lesion mask"),
        output_image(probabilities.reshape(image.shape), image, "spinseg lesion probability"),
        report, rows, result,
    )
    if settings.save_mni:
        template_mask = (template_probabilities > settings.threshold).astype(np.uint8)
        prediction.template_images = {
            "mni_mask": _template_image(template_mask, template, "spinseg lesion mask, MNI152 2009"),
            "mni_probability": _template_image(np.clip(template_probabilities, 0, 1).astype(np.float32), template,
                                               "spinseg lesion probability, MNI152 2009"),
        }
    return prediction


def _template_image(data: np.ndarray, template: Grid, description: str) -> nib.Nifti1Image:
    """A (X, Y, Z) array on the template grid as NIfTI, marked as MNI space (qform/sform code 4)."""
    image = nib.Nifti1Image(data, template.affine)
    image.header.set_qform(template.affine, code=4)
    image.header.set_sform(template.affine, code=4)
    image.header["cal_min"], image.header["cal_max"] = (0.0, 1.0)
    image.header["descrip"] = description.encode()[:79]
    return image
