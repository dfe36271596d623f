"""Makes figures/predict_native_example.png: the QC picture `spinseg predict --register` writes for a native scan.

The scan is the synthetic whole-head subject of tests/test_predict_native.py on the full 1 mm MNI grid, with its
two bright spherical lesions, moved by a random affine and sampled on a sagittal 1 mm LIA grid, intensities x12.
No trained network is shipped, so the model is that test's threshold test double (the command, registration,
resampling and QC code are the real ones):

    PYTHONPATH=src:tests python bash/predict_example_figure.py
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import test_predict_native as native_test
from spinseg.datasets.native_scans import moved_head_box, native_grid, random_affine, sample_on_grid

import spinseg.cli.predict as predict_cli
from spinseg.datasets.synthetic import generate_subject, load_head_model
from spinseg.inference import scan


def main() -> int:
    """Writes the scan, runs the command, copies its QC picture into figures/."""
    work = Path(tempfile.mkdtemp())
    grid = scan.template_grid()
    head = load_head_model(None)
    subject = generate_subject(0, seed=5)
    truth = native_test.spheres(grid.shape, grid.affine)
    mni = np.where(truth, native_test.LESION_LEVEL * head.scale, subject["t1"]).astype(np.float32)
    moving = random_affine(np.random.default_rng(1))
    low, high = moved_head_box(mni, grid.affine, moving)
    shape, affine = native_grid("sagittal", low, high)
    nib.save(nib.Nifti1Image(sample_on_grid(mni, grid.affine, moving, shape, affine) * 12, affine), work / "native_sagittal.nii.gz")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_cli, "load_predict_model",
                      lambda *args: (native_test.BrightThresholdModel(native_test.THRESHOLD_LEVEL * head.scale),
                                     native_test.double_preprocessing()))
        (work / "unused.pth").write_bytes(b"")
        status = predict_cli.main(["--checkpoint", str(work / "unused.pth"), "--input", str(work / "native_sagittal.nii.gz"),
                                   "--output", str(work / "out"), "--register", "--device", "cpu", "--plain_inference"])
    target = Path(__file__).resolve().parents[1] / "figures" / "predict_native_example.png"
    shutil.copyfile(work / "out" / "native_sagittal_qc.png", target)
    print(f"status {status}; {target}")
    return status


if __name__ == "__main__":
    sys.exit(main())
