"""Score any masks: ``python -m spinseg.score --pred DIR --gt DIR [--output DIR]`` (also ``spinseg score``).

Pairs the NIfTI masks of a folder of predictions (any tool: ``spinseg.predict``, nnU-Net, a rater) with
a folder of ground truths and writes what ``spinseg.evaluate`` writes: per-subject CSV/JSON, the Table 2
row (release conventions: a zero denominator scores 0), the challenge metrics (Dice with empty vs empty = 1,
lesion-wise F1 of 26-connected lesions, absolute volume difference in ml, absolute lesion count
difference), detection by lesion size, the boundary metrics (HD95, ASSD, NSD in mm; see
:mod:`spinseg.metrics`) and ``report.md`` with plots.

Pairing: a file whose name holds BIDS entities belongs to subject ``sub-X`` (``sub-X_ses-Y`` when it names a
session); any other file to its name without ``.nii``/``.nii.gz`` and without ``--pred_suffix`` /
``--gt_suffix``. With a suffix, only files ending in it are read (so ``--gt_suffix _LesionSmooth_stx``
skips the T1 scans beside the masks). Folders are searched recursively. Subjects found on one side only
are listed on stderr and in the outputs, and are not scored.

Each pair must share its grid (shape and affine); voxel spacing and volume come from the header.
Masks may be binary (0/1 or 0/255), probability maps in [0, 1] (thresholded: ``value > --threshold``) or
label maps, which need ``--label N`` (mask = value == N). Every file is checked before anything is written.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spinseg.errors import UserInputError, fail
from spinseg.evaluation.boundary_metrics import DEFAULT_TOLERANCE_MM

METRIC_GROUPS = ("release", "challenge", "size", "boundary")
SUBJECTS_JSON_NAME = "subjects.json"
# Same tolerance as spinseg.predict.Grid.matches: headers rounded differently by tools still match.
AFFINE_TOLERANCE_MM = 1e-3
_BIDS_SUBJECT = re.compile(r"(?:^|_)(sub-[A-Za-z0-9]+)(?=_|$)")
_BIDS_SESSION = re.compile(r"(?:^|_)(ses-[A-Za-z0-9]+)(?=_|$)")


@dataclass
class ScoreConfig:
    """Everything ``python -m spinseg.score`` takes (see :func:`build_parser` for meanings)."""

    pred: str = ""
    gt: str = ""
    output: str = "outputs/score"
    pred_suffix: str = ""
    gt_suffix: str = ""
    threshold: float = 0.5
    label: int | None = None
    tolerance_mm: float = DEFAULT_TOLERANCE_MM
    metrics: list[str] = field(default_factory=lambda: list(METRIC_GROUPS))
    method_name: str = ""


@dataclass
class SubjectPairs:
    """Subjects found in both folders (sorted), and those found on one side only."""

    pairs: list[tuple[str, Path, Path]]
    without_prediction: list[str]
    without_ground_truth: list[str]


# --------------------------------------------------------------------------------------------------
# Pairing files by subject
# --------------------------------------------------------------------------------------------------


def subject_key(path: Path, suffix: str = "") -> str | None:
    """The subject a mask file belongs to: ``sub-X[_ses-Y]`` for BIDS names, else the name without
    ``.nii(.gz)`` and ``suffix``; None when ``suffix`` is given and the name does not end with it."""
    from spinseg.inference.scan import scan_name

    name = scan_name(path)
    if suffix:
        if not name.endswith(suffix) or name == suffix:
            return None
        name = name[: -len(suffix)]
    subject = _BIDS_SUBJECT.search(name)
    if subject:
        session = _BIDS_SESSION.search(name)
        return subject.group(1) + (f"_{session.group(1)}" if session else "")
    return name


def collect_masks(folder: str, suffix: str, flag: str) -> dict[str, Path]:
    """{subject: path} of the NIfTI masks under ``folder`` (recursive); one-line errors for a missing or
    empty folder and for two files of the same subject."""
    from spinseg.inference.scan import is_nifti_path

    root = Path(folder)
    if not folder or not root.is_dir():
        raise fail(folder or flag, f"{flag}: not a folder" if folder else "give a folder of NIfTI masks")
    found: dict[str, Path] = {}
    for path in sorted(item for item in root.rglob("*") if item.is_file() and is_nifti_path(item)):
        key = subject_key(path, suffix)
        if key is None:
            continue
        if key in found:
            raise fail(path, f"same subject {key!r} as {found[key]}; give {flag}_suffix to tell the masks apart")
        found[key] = path
    if not found:
        ending = f" whose name ends in {suffix!r}" if suffix else ""
        raise fail(root, f"{flag}: folder holds no .nii or .nii.gz files{ending}")
    return found


def pair_subjects(predictions: dict[str, Path], ground_truths: dict[str, Path]) -> SubjectPairs:
    """Matches subjects of both folders; raises a one-line error when none is common to both."""
    common = sorted(set(predictions) & set(ground_truths))
    if not common:
        raise UserInputError(
            f"no subject in both folders (predictions: {_preview(predictions)}; ground truths: "
            f"{_preview(ground_truths)}); --pred_suffix/--gt_suffix strip the parts that differ"
        )
    # The same folder given twice scores every subject perfectly, which reads like a result.
    same = [key for key in common if predictions[key].resolve() == ground_truths[key].resolve()]
    if same:
        more = f" (and of {len(same) - 1} more)" if len(same) > 1 else ""
        raise fail(predictions[same[0]], f"is both the prediction and the ground truth of subject {same[0]!r}{more}; "
                                         "--pred and --gt must name different masks")
    return SubjectPairs(
        pairs=[(key, predictions[key], ground_truths[key]) for key in common],
        without_prediction=sorted(set(ground_truths) - set(predictions)),
        without_ground_truth=sorted(set(predictions) - set(ground_truths)),
    )


def _preview(subjects: dict[str, Path], count: int = 3) -> str:
    """The first few subject names, e.g. 'a, b, c, ... (12)'."""
    names = sorted(subjects)
    return ", ".join(names[:count]) + (f", ... ({len(names)})" if len(names) > count else "")


# --------------------------------------------------------------------------------------------------
# Reading masks
# --------------------------------------------------------------------------------------------------


def image_shape(image, path: Path) -> tuple[int, int, int]:
    """The 3-D shape of a mask image, squeezing a trailing 4th dimension of 1; else a one-line error."""
    shape = tuple(int(size) for size in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise fail(path, f"{len(image.shape)}-D image of shape {tuple(image.shape)}; a mask must be 3-D")
    return shape


def check_same_grid(prediction_path: Path, ground_truth_path: Path, prediction_image, ground_truth_image) -> None:
    """One-line error naming both files unless they share shape and affine (within 1e-3 mm)."""
    prediction_shape = image_shape(prediction_image, prediction_path)
    ground_truth_shape = image_shape(ground_truth_image, ground_truth_path)
    if prediction_shape != ground_truth_shape:
        raise fail(prediction_path, f"shape {prediction_shape} != {ground_truth_shape} of its ground truth {ground_truth_path}")
    difference = float(np.abs(prediction_image.affine - ground_truth_image.affine).max())
    if not difference <= AFFINE_TOLERANCE_MM:
        raise fail(prediction_path, f"affine differs from its ground truth {ground_truth_path} by up to {difference:.4g} "
                                    "(not the same voxel grid; resample one onto the other first)")


def binary_mask(data: np.ndarray, path: Path, threshold: float, label: int | None) -> np.ndarray:
    """A bool mask (X, Y, Z) from a NIfTI's voxels: binary (one non-zero value), probability map in [0, 1]
    (``> threshold``) or, with ``label``, ``== label``. NaN/Inf and unlabelled label maps are one-line errors."""
    finite = np.isfinite(data)
    if not finite.all():
        raise fail(path, f"{int((~finite).sum())} voxels are NaN or Inf")
    if label is not None:
        return data == label
    nonzero = data != 0
    # Unique values of the foreground only: masks are mostly background, so this is quick.
    values = np.unique(data[nonzero])
    if values.size == 0:
        return nonzero
    integral = bool(np.all(values == np.round(values)))
    if integral and values.size == 1 and values[0] > 0:
        return nonzero
    if integral and values.min() > 0:
        shown = ", ".join(f"{value:g}" for value in values[:6]) + (", ..." if values.size > 6 else "")
        raise fail(path, f"label map with values 0, {shown}; say which label is the lesion with --label N")
    if not integral and values.min() >= 0 and values.max() <= 1:
        return data > threshold
    raise fail(path, f"values from {values.min():g} to {values.max():g}: not a binary mask, a probability map in "
                     "[0, 1] or a label map of positive integers")


def read_mask(path: Path, image, threshold: float, label: int | None) -> np.ndarray:
    """The voxels of an opened NIfTI mask as bool (X, Y, Z); unreadable data is a one-line error."""
    import zlib

    from spinseg.inference.scan import describe_read_error

    shape = image_shape(image, path)
    try:
        data = np.asanyarray(image.dataobj).reshape(shape)
    except (OSError, EOFError, ValueError, TypeError, zlib.error) as error:
        raise fail(path, f"cannot read the voxels ({describe_read_error(error)})") from None
    return binary_mask(data, path, threshold, label)


def header_spacing(image) -> tuple[tuple[float, float, float], float]:
    """(voxel edge lengths in mm per array axis, voxel volume in ml) from a NIfTI's affine."""
    from spinseg.inference.scan import voxel_sizes

    spacing = tuple(float(value) for value in voxel_sizes(image.affine))
    columns = np.asarray(image.affine, dtype=np.float64)[:3, :3].T
    # The triple product rather than np.linalg.det: exact for diagonal affines (4 mm voxels -> 0.064 ml).
    volume_mm3 = abs(float(np.dot(columns[0], np.cross(columns[1], columns[2]))))
    return spacing, volume_mm3 / 1000.0


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score_masks(subject: str, ground_truth: np.ndarray, prediction: np.ndarray, spacing_mm, voxel_volume_ml: float,
                config: ScoreConfig) -> dict:
    """The record of one subject (:func:`spinseg.reporting.subject_record`, plus boundary metrics when asked)."""
    from spinseg.evaluation import reporting
    from spinseg.evaluation.boundary_metrics import boundary_metrics

    record = reporting.subject_record(subject, ground_truth, prediction, voxel_volume_ml)
    if "boundary" in config.metrics:
        record.update(boundary_metrics(ground_truth, prediction, spacing_mm, config.tolerance_mm))
    return record


def score_pair(subject: str, prediction_path: Path, ground_truth_path: Path, config: ScoreConfig) -> dict:
    """Reads, checks and scores one (prediction, ground truth) pair; returns its record."""
    from spinseg.inference.scan import load_scan

    prediction_image, ground_truth_image = load_scan(prediction_path), load_scan(ground_truth_path)
    check_same_grid(prediction_path, ground_truth_path, prediction_image, ground_truth_image)
    prediction = read_mask(prediction_path, prediction_image, config.threshold, config.label)
    ground_truth = read_mask(ground_truth_path, ground_truth_image, config.threshold, config.label)
    spacing, voxel_volume_ml = header_spacing(ground_truth_image)
    record = score_masks(subject, ground_truth, prediction, spacing, voxel_volume_ml, config)
    record.update(spacing_mm=list(spacing), prediction_path=str(prediction_path), ground_truth_path=str(ground_truth_path))
    return record


def validate_config(config: ScoreConfig) -> None:
    """One-line errors for flags no scoring can use."""
    unknown = sorted(set(config.metrics) - set(METRIC_GROUPS))
    if unknown:
        raise UserInputError(f"--metrics: unknown group(s) {', '.join(unknown)}; choose from {', '.join(METRIC_GROUPS)}")
    if not 0.0 <= config.threshold < 1.0:
        raise UserInputError(f"--threshold {config.threshold}: must be in [0, 1)")
    if not (np.isfinite(config.tolerance_mm) and config.tolerance_mm >= 0):
        raise UserInputError(f"--tolerance_mm {config.tolerance_mm}: must be a finite number >= 0")
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise fail(output, "--output exists and is not a folder")


def unmatched_lines(subjects: SubjectPairs) -> list[str]:
    """One line per kind of unmatched subject (nothing when every subject has both files)."""
    lines = []
    if subjects.without_prediction:
        lines.append(f"Not scored, no prediction for {len(subjects.without_prediction)} ground truth(s): "
                     + ", ".join(subjects.without_prediction))
    if subjects.without_ground_truth:
        lines.append(f"Not scored, no ground truth for {len(subjects.without_ground_truth)} prediction(s): "
                     + ", ".join(subjects.without_ground_truth))
    return lines


def score(config: ScoreConfig) -> dict:
    """Scores every paired subject and writes the outputs; returns {"table2", "table3", "records", "subjects", ...}."""
    from spinseg.evaluation import reporting
    from spinseg.io.files import write_json

    validate_config(config)
    subjects = pair_subjects(collect_masks(config.pred, config.pred_suffix, "--pred"),
                             collect_masks(config.gt, config.gt_suffix, "--gt"))
    for line in unmatched_lines(subjects):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    started = time.time()
    # Every pair is read and scored before the first output is written, so a bad file leaves nothing.
    records = [score_pair(subject, prediction, ground_truth, config) for subject, prediction, ground_truth in subjects.pairs]
    seconds = time.time() - started
    method = config.method_name or Path(config.pred).resolve().name
    output = Path(config.output)
    heading = [f"{len(records)} subjects scored, {seconds:.1f} s", *unmatched_lines(subjects)]
    written = reporting.write_evaluation_outputs(output, records, method, config.metrics, heading,
                                                 title=f"Scores of {method}")
    write_json(output / SUBJECTS_JSON_NAME, {
        "scored": [subject for subject, _, _ in subjects.pairs],
        "ground_truth_without_prediction": subjects.without_prediction,
        "prediction_without_ground_truth": subjects.without_ground_truth,
    })
    return {"table2": written["table2"], "table3": written["table3"], "records": records, "subjects": subjects,
            "output_path": str(output), "seconds": seconds}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
