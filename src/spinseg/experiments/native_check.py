"""The main job's native-space check: does ``predict --register`` keep a trained model's Dice on a
scan that is not in MNI space?

One held-out test subject of the synthetic ATLAS (raw T1 and lesion mask, R1.2 layout) is moved by a
seeded random affine (rotations up to 15 deg, shifts up to 30 mm, scaling +-10% by default) and
sampled on a scanner's sagittal 1 mm LIA grid of 176 x 256 x 256 centred on the moved brain, with its
intensities multiplied by 12 (another scanner's units). The ground truth is moved the same way
(linear interpolation, >= 0.5). ``python -m spinseg.predict --register`` segments the native scan,
and plain ``python -m spinseg.predict`` segments the unmoved MNI-space T1; the result is
Dice(native mask, native ground truth), Dice(MNI mask, MNI ground truth) and their ratio, written
as JSON. The MNI-space T1 is also segmented with ``--intensity standardize`` (what ``--register``
does to intensities), which splits a loss into the intensity step's share and the geometry's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from spinseg.datasets.atlas_raw import R12, RawSubject, discover, load_subject
from spinseg.datasets.native_scans import (
    mean_displacement_mm,
    random_affine,
    sagittal_scanner_scan,
    sample_on_grid,
)
from spinseg.datasets.splits import read_split
from spinseg.errors import UserInputError, fail
from spinseg.evaluation.metrics import dice_score
from spinseg.inference.scan import scan_name
from spinseg.inference.study import ScanJob, output_names
from spinseg.io.files import atomic_path, write_json


@dataclass(frozen=True)
class NativeCheckConfig:
    """What the check reads, how the subject is moved, and where results go."""

    atlas_dir: str  # raw synthetic ATLAS (R1.2 layout) with data_split/<split>/test_subjects.txt
    checkpoint: str  # the trained model predict loads
    output_json: str = "outputs/spin/synthetic_atlas/native_check.json"
    work_dir: str = ""  # scans and predict outputs; empty: <folder of output_json>/native_check
    subject: str = ""  # empty: the held-out subject with the most lesion voxels
    split: str = "traintest"
    seed: int = 0  # of the random affine
    native_shape: tuple[int, int, int] = (176, 256, 256)
    voxel_mm: float = 1.0
    intensity_scale: float = 12.0
    rotation_deg: float = 15.0
    shift_mm: float = 30.0
    scale: float = 0.10
    device: str = "auto"
    batch_size: int = 8

    def work_folder(self) -> Path:
        """The folder for the moved scan, its ground truth and both predict runs."""
        return Path(self.work_dir) if self.work_dir else Path(self.output_json).parent / "native_check"


def check_config(config: NativeCheckConfig) -> None:
    """One-line errors for values the check cannot use."""
    if len(config.native_shape) != 3 or min(config.native_shape) < 8:
        raise UserInputError(f"--native_shape {' '.join(map(str, config.native_shape))}: expected three sizes of at least 8")
    for name in ("voxel_mm", "intensity_scale"):
        if not getattr(config, name) > 0:
            raise UserInputError(f"--{name} {getattr(config, name)}: expected a positive number")
    if not 0 <= config.scale < 1 or config.rotation_deg < 0 or config.shift_mm < 0:
        raise UserInputError("--rotation_deg and --shift_mm must be >= 0 and --scale in [0, 1)")
    if not Path(config.checkpoint).is_file():
        raise fail(config.checkpoint, "checkpoint not found")


def held_out_subject(atlas_dir: str, split: str, subject: str = "") -> RawSubject:
    """The test subject ``subject`` of ``<atlas_dir>/data_split/<split>``, or (empty) the one with the most lesion voxels."""
    split_dir = Path(atlas_dir) / "data_split" / split
    test_ids = read_split(split_dir).get("test")
    if not test_ids:
        raise fail(split_dir, "split has no test_subjects.txt (no held-out subject)")
    available = discover(atlas_dir, R12)
    if subject and subject not in test_ids:
        raise fail(split_dir / "test_subjects.txt", f"{subject} is not a held-out test subject")
    candidates = [subject] if subject else test_ids
    missing = [name for name in candidates if name not in available]
    if missing:
        raise fail(atlas_dir, f"held-out subject {missing[0]} not found")
    if subject:
        return available[subject]
    # Ties keep the split's order, so the choice is the same on every machine.
    sizes = [int(load_subject(available[name])[1].sum()) for name in candidates]
    return available[candidates[int(np.argmax(sizes))]]


def save_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    """Writes (X, Y, Z) ``volume`` on ``affine`` as NIfTI, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        nib.save(nib.Nifti1Image(volume, affine), temporary)


def move_subject(t1: np.ndarray, mask: np.ndarray, affine: np.ndarray, config: NativeCheckConfig) -> dict:
    """The subject on a native grid: ``{"scan": (X, Y, Z) float32 x intensity_scale, "truth": bool,
    "affine": grid 4x4, "moving": MNI mm -> scan mm 4x4}``."""
    moving = random_affine(np.random.default_rng(config.seed), config.rotation_deg, config.shift_mm, config.scale)
    shape = tuple(int(size) for size in config.native_shape)
    scan, grid_affine = sagittal_scanner_scan(t1, affine, moving, shape, config.voxel_mm)
    truth = sample_on_grid(mask.astype(np.float32), affine, moving, shape, grid_affine) >= 0.5
    return {"scan": scan * np.float32(config.intensity_scale), "truth": truth, "affine": grid_affine, "moving": moving}


def run_predict_subprocess(arguments: list[str]) -> int:
    """``python -m spinseg.predict <arguments>`` in a fresh interpreter; returns its exit code."""
    return subprocess.run([sys.executable, "-m", "spinseg.predict", *arguments], check=False).returncode


def predict_mask(predict: Callable[[list[str]], int], scan: Path, output_dir: Path, config: NativeCheckConfig,
                 extra: list[str]) -> tuple[np.ndarray, Path]:
    """Runs ``predict`` (with ``extra`` flags) on one scan; returns (its mask (X, Y, Z) bool, its report path)."""
    arguments = ["--checkpoint", str(config.checkpoint), "--input", str(scan), "--output", str(output_dir),
                 "--device", config.device, "--batch_size", str(config.batch_size), "--overwrite", *extra]
    status = predict(arguments)
    paths = output_names(ScanJob(scan, output_dir, scan_name(scan)))  # a plain input file's names in --output
    if status != 0 or not paths["mask"].is_file():
        raise fail(scan, f"predict {' '.join(extra)} failed (exit code {status})")
    return np.asarray(nib.load(paths["mask"]).dataobj) > 0, paths["report"]


def registration_error_mm(report_path: Path, moving: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> float | None:
    """Mean distance (mm) over the lesion voxels between the recovered and the true MNI -> scan map."""
    recovered = json.loads(report_path.read_text()).get("registration", {}).get("template_to_scan_ras")
    if recovered is None or not mask.any():
        return None
    points = (affine[:3, :3] @ np.argwhere(mask).T + affine[:3, 3:4]).T
    return mean_displacement_mm(np.asarray(recovered), moving, points)


def native_check(config: NativeCheckConfig, predict: Callable[[list[str]], int] = run_predict_subprocess) -> dict:
    """Moves the held-out subject, predicts it in both spaces with ``predict`` (argument list -> exit
    code; default: a ``python -m spinseg.predict`` process), and writes the result JSON; returns it."""
    check_config(config)
    subject = held_out_subject(config.atlas_dir, config.split, config.subject)
    t1, mask = load_subject(subject)
    affine = np.asarray(nib.load(subject.scan_path).affine, dtype=float)
    moved = move_subject(t1, mask, affine, config)
    work = config.work_folder()
    native_scan = work / "native_scan" / f"{subject.subject_id}_native.nii.gz"
    save_nifti(native_scan, moved["scan"], moved["affine"])
    save_nifti(work / "ground_truth" / f"{subject.subject_id}_native_truth.nii.gz", moved["truth"].astype(np.uint8), moved["affine"])
    native_mask, native_report = predict_mask(predict, native_scan, work / "native_prediction", config, ["--register"])
    mni_mask, _ = predict_mask(predict, subject.scan_path, work / "mni_prediction", config, [])
    # --register standardises intensities; the MNI-space subject once more with that alone tells the
    # intensity step's share of any loss from the geometry's (registration and resampling).
    mni_standardized_mask, _ = predict_mask(predict, subject.scan_path, work / "mni_prediction_standardized", config,
                                            ["--intensity", "standardize"])
    dice_native, dice_mni = dice_score(moved["truth"], native_mask), dice_score(mask > 0, mni_mask)
    result = {
        "subject": subject.subject_id,
        "checkpoint": str(config.checkpoint),
        "dice_native": dice_native,
        "dice_mni": dice_mni,
        "ratio_native_to_mni": dice_native / dice_mni if dice_mni > 0 else None,
        "dice_mni_intensity_standardized": dice_score(mask > 0, mni_standardized_mask),
        "lesion_voxels_mni": int((mask > 0).sum()),
        "lesion_voxels_native": int(moved["truth"].sum()),
        "registration_error_mm_over_lesion": registration_error_mm(native_report, moved["moving"], mask > 0, affine),
        "moving_mni_to_scan_ras": moved["moving"].tolist(),
        "native_affine": moved["affine"].tolist(),
        "config": {**asdict(config), "native_shape": list(config.native_shape)},
    }
    write_json(config.output_json, result)
    ratio = "n/a" if result["ratio_native_to_mni"] is None else f"{result['ratio_native_to_mni']:.3f}"
    print(f"native-space check on {subject.subject_id}: Dice native {dice_native:.3f}, Dice MNI {dice_mni:.3f}, "
          f"ratio {ratio}; wrote {config.output_json}", flush=True)
    return result
