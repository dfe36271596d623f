"""``python -m spinseg.predict``: geometry round trips, outputs, reports and one-line errors.

The networks are too slow on a shared CPU to run on full 197x233x189 volumes in a test, so:

* the fixture SPiN (small config) runs through the whole command on a coarse 4 mm MNI-like grid
  (``template_grid`` monkeypatched), checking outputs, headers and independent readers;
* a "threshold model" test double (marks dark voxels well inside bright tissue) runs on the real
  1 mm MNI grid, to check that a planted lesion comes back where it was, also for a 1.5 mm input
  with another orientation and axis order.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nibabel.processing import resample_from_to

from spinseg.cli import predict as predict_cli
from spinseg.constants import ATLAS_MEAN, ATLAS_STD
from spinseg.data.transforms import Normalization
from spinseg.errors import UserInputError
from conftest import (
    BRAIN,
    LESION,
    LESION_CENTRE_MM,
    LESION_RADIUS_MM,
    coarse_template,
    ellipsoid_brain,
    run_python,
    world_coordinates,
)
from spinseg.inference import scan as predict
from spinseg.recipes.preprocessing import Preprocessing, PreprocessingFlags

FIXTURES = Path(__file__).parent / "fixtures"
SMALL_CHECKPOINT = str(FIXTURES / "spin_small_original_format.pth")
SMALL_CONFIG = str(FIXTURES / "spin_small_config.json")
REPO = Path(__file__).resolve().parents[1]
ATLAS_NORMALIZATION = Normalization("standard", [ATLAS_MEAN], [ATLAS_STD])


class ThresholdModel(torch.nn.Module):
    """Test double of a 2.5-D network: (B, n_chunk, H, W) normalised -> logits (B, 1, H, W).

    logits = k * (t - centre slice): positive on voxels darker than ``threshold_raw``, except
    within 3 pixels (or 2 slices) of background, so partial-volume voxels at the brain's edge,
    which interpolation makes dark too, are not marked.
    """

    def __init__(self, normalization, n_chunk: int = 5, threshold_raw: float = 60.0, background_raw: float = 5.0):
        super().__init__()
        self.in_channels = n_chunk
        self.threshold = (threshold_raw - normalization.means[0]) / normalization.stddevs[0]
        self.background = (background_raw - normalization.means[0]) / normalization.stddevs[0]
        self.sharpness = 20.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 :][:, :1]
        background = (x < self.background).float().amax(dim=1, keepdim=True)
        near_background = F.max_pool2d(background, 7, stride=1, padding=3) > 0
        logits = self.sharpness * (self.threshold - centre)
        return torch.where(near_background, torch.full_like(logits, -self.sharpness), logits)


def reslice(image: nib.Nifti1Image, voxel_mm: float, order: int = 1, shift_mm=(0.0, 0.0, 0.0)) -> nib.Nifti1Image:
    """Copy of ``image`` on a grid with ``voxel_mm`` voxels, axes permuted (i->z, j->-x, k->y), covering its box."""
    low, high = predict.world_bounds(predict.Grid(image.shape[:3], image.affine))
    extent = high - low + 1
    affine = np.array(
        [[0, -voxel_mm, 0, high[0] + shift_mm[0]], [0, 0, voxel_mm, low[1] + shift_mm[1]],
         [voxel_mm, 0, 0, low[2] + shift_mm[2]], [0, 0, 0, 1.0]]
    )
    shape = tuple(int(np.ceil(extent[axis] / voxel_mm)) for axis in (2, 0, 1))
    return resample_from_to(image, (shape, affine), order=order, mode="constant", cval=0.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity of two boolean arrays."""
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def assert_outputs_match_input(output: Path, name: str, input_image: nib.Nifti1Image, probability: bool) -> dict:
    """Checks a scan's outputs against its input with nibabel and SimpleITK; returns its report."""
    import SimpleITK as sitk

    mask_path = output / f"{name}_lesion_mask.nii.gz"
    mask = nib.load(mask_path)
    assert mask.shape == input_image.shape
    np.testing.assert_allclose(mask.affine, input_image.affine, atol=1e-5)
    assert mask.get_data_dtype() == np.uint8
    values = np.asarray(mask.dataobj)
    assert values.dtype == np.uint8 and set(np.unique(values)) <= {0, 1}
    for field in ("qform_code", "sform_code", "xyzt_units"):
        assert int(mask.header[field]) == int(input_image.header[field])
    files = [mask_path]
    if probability:
        probability_image = nib.load(output / f"{name}_lesion_prob.nii.gz")
        assert probability_image.shape == input_image.shape and probability_image.get_data_dtype() == np.float32
        np.testing.assert_allclose(probability_image.affine, input_image.affine, atol=1e-5)
        probabilities = np.asarray(probability_image.dataobj)
        assert probabilities.min() >= 0 and probabilities.max() <= 1
        np.testing.assert_array_equal(values, (probabilities > 0.5).astype(np.uint8))
        files.append(output / f"{name}_lesion_prob.nii.gz")
    for path in files:  # an independent reader sees the same grid
        itk_image = sitk.ReadImage(str(path))
        assert itk_image.GetSize()[:3] == tuple(input_image.shape[:3])
        np.testing.assert_allclose(itk_image.GetSpacing()[:3], input_image.header.get_zooms()[:3], atol=1e-4)
    qc = output / f"{name}_qc.png"
    assert qc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((output / f"{name}_report.json").read_text())
    assert report["input_shape"] == list(input_image.shape)
    np.testing.assert_allclose(report["input_affine"], input_image.affine, atol=1e-5)
    assert report["lesion_voxel_count"] == int(values.sum())
    voxel_ml = abs(np.linalg.det(input_image.affine[:3, :3])) / 1000
    assert report["lesion_volume_ml"] == pytest.approx(values.sum() * voxel_ml, rel=1e-4)
    assert report["n_lesions"] == len(report["lesions"])
    assert sum(lesion["voxels"] for lesion in report["lesions"]) == report["lesion_voxel_count"]
    assert report["image_voxel_count"] == int(np.prod(input_image.shape))
    for key in ("model", "checkpoint", "threshold", "test_time_flip", "mni_warning", "n_chunk", "connectivity"):
        assert key in report
    return report


def test_fixture_spin_via_cli_on_mni_resliced_and_shifted_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "template_grid", coarse_template)
    grid = coarse_template()
    volume, _ = ellipsoid_brain(grid.shape, grid.affine)
    inputs = tmp_path / "scans"
    inputs.mkdir()
    # int16 with a scale factor, as scanners write: the mask must not inherit the scaling.
    mni = nib.Nifti1Image(np.round(volume * 10).astype(np.int16), grid.affine)
    mni.header.set_slope_inter(0.1, 0.0)
    mni.header.set_qform(grid.affine, code=4)
    mni.header.set_sform(grid.affine, code=4)
    nib.save(mni, inputs / "mni.nii.gz")
    float_mni = nib.Nifti1Image(volume, grid.affine)
    nib.save(reslice(float_mni, 6.0), inputs / "resliced.nii")
    output = tmp_path / "out"

    status = predict_cli.main([
        "--model", "spin", "--checkpoint", SMALL_CHECKPOINT, "--model_config", SMALL_CONFIG,
        "--input", str(inputs), "--output", str(output), "--save_probability", "--device", "cpu", "--batch_size", "24",
    ])
    assert status == 0
    stderr = capsys.readouterr().err
    assert "warning:" not in stderr
    for name in ("mni", "resliced"):
        input_image = nib.load(inputs / (f"{name}.nii" if name == "resliced" else f"{name}.nii.gz"))
        report = assert_outputs_match_input(output, name, input_image, probability=True)
        assert report["model"] == "spin" and report["checkpoint"] == SMALL_CHECKPOINT
        assert report["n_chunk"] == 5  # from the model's input width: no --n_chunk given
        assert not report["mni_warning"]
        assert report["resampled_to_template"] == (name != "mni")
    assert sorted(path.name for path in output.iterdir() if path.name.startswith(".")) == []  # no temporaries left


def test_prepared_model_gives_the_plain_models_probabilities_and_mask(tmp_path, monkeypatch):
    """The default (batch norm folded, channels-last) and ``--plain_inference`` agree to float rounding."""
    monkeypatch.setattr(predict, "template_grid", coarse_template)
    grid = coarse_template()
    volume, _ = ellipsoid_brain(grid.shape, grid.affine, seed=3)
    nib.save(nib.Nifti1Image(volume, grid.affine), tmp_path / "scan.nii.gz")
    import spinseg.acceleration.inference as acceleration

    prepared_models = []
    original_prepare = acceleration.prepare_inference_model
    monkeypatch.setattr(acceleration, "prepare_inference_model",
                        lambda model, **kwargs: prepared_models.append(original_prepare(model, **kwargs)) or prepared_models[-1])
    outputs = {}
    for label, extra in (("prepared", []), ("plain", ["--plain_inference"])):
        status = predict_cli.main(["--model", "spin", "--checkpoint", SMALL_CHECKPOINT, "--model_config", SMALL_CONFIG,
                               "--input", str(tmp_path / "scan.nii.gz"), "--output", str(tmp_path / label),
                               "--save_probability", "--device", "cpu", *extra])
        assert status == 0
        outputs[label] = [np.asarray(nib.load(tmp_path / label / f"scan_{kind}.nii.gz").dataobj)
                          for kind in ("lesion_prob", "lesion_mask")]
    assert len(prepared_models) == 1  # the default run prepared the model, --plain_inference did not
    (prepared_probability, prepared_mask), (plain_probability, plain_mask) = outputs["prepared"], outputs["plain"]
    assert plain_probability.max() > 0.01  # the comparison is about real outputs, not all zeros
    assert np.abs(prepared_probability - plain_probability).max() <= 1e-4
    assert np.array_equal(prepared_mask, plain_mask)


def test_planted_lesion_is_found_on_mni_and_resliced_reoriented_grids(tmp_path, monkeypatch):
    from nilearn import datasets

    normalization = ATLAS_NORMALIZATION
    record = Preprocessing("spin", {}, 5, "standard", list(normalization.means), list(normalization.stddevs))
    monkeypatch.setattr(predict_cli, "load_predict_model", lambda *args: (ThresholdModel(normalization), record))
    grid = predict.template_grid()
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    world = world_coordinates(grid.shape, grid.affine)
    lesion = ((world - LESION_CENTRE_MM[:, None, None, None]) ** 2).sum(0) <= LESION_RADIUS_MM**2
    assert brain[lesion].all()
    volume = np.where(brain, BRAIN, 0.0).astype(np.float32)
    volume[lesion] = LESION
    mni = nib.Nifti1Image(volume, grid.affine)
    lesion_image = nib.Nifti1Image(lesion.astype(np.uint8), grid.affine)
    inputs = {"mni": (mni, lesion), "resliced": (reslice(mni, 1.5), np.asarray(reslice(lesion_image, 1.5, order=0).dataobj) > 0)}
    for name, (image, _) in inputs.items():
        nib.save(image, tmp_path / f"{name}.nii.gz")
    output = tmp_path / "out"
    status = predict_cli.main([
        "--checkpoint", SMALL_CHECKPOINT, "--input", str(tmp_path / "mni.nii.gz"), str(tmp_path / "resliced.nii.gz"),
        "--output", str(output), "--batch_size", "64",
    ])
    assert status == 0
    planted_ml = 4 / 3 * np.pi * LESION_RADIUS_MM**3 / 1000
    for name, (image, planted) in inputs.items():
        report = assert_outputs_match_input(output, name, image, probability=False)
        found = np.asarray(nib.load(output / f"{name}_lesion_mask.nii.gz").dataobj) > 0
        assert dice(found, planted) > (0.95 if name == "mni" else 0.8), name
        assert report["n_lesions"] == 1 and not report["mni_warning"]
        assert report["lesion_volume_ml"] == pytest.approx(planted_ml, rel=0.25)
        np.testing.assert_allclose(report["lesions"][0]["centroid_mm"], LESION_CENTRE_MM, atol=1.5)


def test_squeezed_4d_keeps_its_shape_shifted_scan_warns_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch, capsys):
    from spinseg.inference import study
    from spinseg.inference.native import PredictSettings

    monkeypatch.setattr(predict, "template_grid", coarse_template)
    grid = coarse_template()
    volume, lesion = ellipsoid_brain(grid.shape, grid.affine)
    image = nib.Nifti1Image(volume[..., None], grid.affine)
    nib.save(image, tmp_path / "four_d_1.nii.gz")
    model = ThresholdModel(ATLAS_NORMALIZATION)
    # The stand-in model runs as it is (plain path), 5 stacked slices.
    settings = PredictSettings(5, ATLAS_NORMALIZATION, prepare=False)

    def run(name: str, output: Path) -> list[dict]:
        jobs = study.collect_jobs([str(tmp_path / name)], output)
        return study.run_study(model, jobs, output, settings)

    rows = run("four_d_1.nii.gz", tmp_path / "out")
    assert [row["status"] for row in rows] == ["ok"]
    mask = nib.load(tmp_path / "out" / "four_d_1_lesion_mask.nii.gz")
    assert mask.shape == image.shape
    assert dice(np.asarray(mask.dataobj)[..., 0] > 0, lesion) > 0.6  # 4 mm voxels: coarse sphere
    assert "warning:" not in capsys.readouterr().err

    # 60 mm off the template: still processed, with one warning line and the flag in the report.
    nib.save(reslice(nib.Nifti1Image(volume, grid.affine), 4.0, shift_mm=(60.0, 0.0, 0.0)), tmp_path / "shifted.nii.gz")
    rows = run("shifted.nii.gz", tmp_path / "out_shifted")
    warnings = capsys.readouterr().err.strip().splitlines()
    assert rows[0]["status"] == "ok" and len(warnings) == 1 and warnings[0].startswith("warning: ") and "shifted" in warnings[0]
    report = json.loads((tmp_path / "out_shifted" / "shifted_report.json").read_text())
    assert report["mni_warning"] and report["mni_warning_reasons"]
    assert nib.load(tmp_path / "out_shifted" / "shifted_lesion_mask.nii.gz").shape == nib.load(tmp_path / "shifted.nii.gz").shape

    def broken_picture(*args, **kwargs):
        raise UserInputError("qc.png: disk full")

    monkeypatch.setattr(study, "save_qc", broken_picture)
    rows = run("four_d_1.nii.gz", tmp_path / "again")
    assert [(row["status"], row["error"]) for row in rows] == [("failed", "qc.png: disk full")]
    assert not (tmp_path / "again").exists() or list((tmp_path / "again").rglob("*")) == []


def test_release_unet_checkpoint_defaults_to_one_slice(tmp_path):
    from spinseg.models import build_model

    config = {"n_filters_encoder_segmentation": [4, 4, 8, 8, 8], "n_filters_decoder_segmentation": [8, 8, 4, 4]}
    unet = build_model("unet", **config)
    torch.save({**unet.release_state_dicts(), "train_step": 10}, tmp_path / "unet_atlas_traintest.pth")
    model, preprocessing = predict.load_predict_model(str(tmp_path / "unet_atlas_traintest.pth"), PreprocessingFlags("unet", config))
    assert preprocessing.n_chunk == 1 and model.in_channels == 1
    # The authors' checkpoints record nothing: the U-Net recipe's normalisation, not a guess from elsewhere.
    assert preprocessing.dataset_means == [ATLAS_MEAN] and preprocessing.source == "recipe unet"
    with pytest.raises(UserInputError, match="checkpoint of another model|does not fit"):
        predict.load_predict_model(str(tmp_path / "unet_atlas_traintest.pth"), PreprocessingFlags("spin"))


def write_bad_scans(folder: Path) -> dict[str, str]:
    """Writes one broken scan per problem; returns {file name: expected words of its error}."""
    folder.mkdir()
    (folder / "text.nii.gz").write_text("not an image\n")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(50, 10, (24, 24, 24)).astype(np.float32), np.eye(4)), folder / "whole.nii.gz")
    whole = (folder / "whole.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "whole.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), folder / "four_d.nii.gz")
    with_nan = np.ones((8, 8, 8), np.float32)
    with_nan[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(with_nan, np.eye(4)), folder / "nan.nii")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), folder / "empty.nii.gz")
    return {
        "text.nii.gz": "not a readable NIfTI",
        "truncated.nii.gz": "truncated",
        "four_d.nii.gz": "4-D image",
        "nan.nii": "NaN or Inf",
        "empty.nii.gz": "empty image",
    }


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    """Runs ``python -m spinseg.predict`` in a fresh interpreter."""
    return run_python(["-m", "spinseg.predict", *arguments], cwd=REPO)


def test_bad_scans_give_one_line_each_exit_2_and_no_outputs(tmp_path):
    expected = write_bad_scans(tmp_path / "bad")
    output = tmp_path / "out"
    result = run_cli("--checkpoint", SMALL_CHECKPOINT, "--model_config", SMALL_CONFIG, "--input", str(tmp_path / "bad"),
                     "--output", str(output), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(expected), lines
    for name, words in expected.items():
        matching = [line for line in lines if f"{name}:" in line]
        assert len(matching) == 1 and words in matching[0] and matching[0].startswith("error: "), (name, lines)
    assert not output.exists() or list(output.iterdir()) == []


def test_missing_checkpoint_is_one_line_exit_2(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    result = run_cli("--checkpoint", str(tmp_path / "nope.pth"), "--input", str(tmp_path / "scan.nii.gz"),
                     "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.pth'}: checkpoint not found"]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing_input", "input not found"),
        ("empty_folder", "folder holds no .nii or .nii.gz files"),
        ("not_nifti_name", "not a NIfTI file name"),
        ("other_model", "does not fit model 'unet'"),
    ],
)
def test_fatal_input_errors_are_one_line_exit_2(tmp_path, capsys, case, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "scan.txt").write_text("x")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    inputs = {"missing_input": tmp_path / "absent.nii.gz", "empty_folder": tmp_path / "empty",
              "not_nifti_name": tmp_path / "scan.txt"}.get(case, tmp_path / "scan.nii.gz")
    model = "unet" if case == "other_model" else "spin"
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["--model", model, "--checkpoint", SMALL_CHECKPOINT, "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and words in stderr[0] and stderr[0].startswith("error: ")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_registration_warning_reasons():
    template = predict.template_grid()
    assert predict.registration_warnings(template) == []
    native = predict.Grid((256, 256, 176), np.array([[0, 0, 1.0, -80], [-1.0, 0, 0, 150], [0, -1.0, 0, 120], [0, 0, 0, 1]]))
    assert any("bounding box" in reason for reason in predict.registration_warnings(native))
    coarse = predict.Grid((66, 78, 63), np.diag([3.0, 3.0, 3.0, 1.0]) + np.array([[0, 0, 0, -98], [0, 0, 0, -134], [0, 0, 0, -72], [0, 0, 0, 0]]))
    assert any("voxel size" in reason for reason in predict.registration_warnings(coarse))
