"""``predict --register``: scans that are not in MNI space, intensity safety, the lesion report, whole studies.

Sizes a test can afford: the template grid is the MNI152 2009 box at ~3 mm (66 x 78 x 63, a
corner-aligned down-sampling, monkeypatched in as ``template_grid``), and the native grids are the
scanner grids at coarser voxels (sagittal LIA 2 mm instead of 1 mm; axial 1.8 x 1.8 x 5 mm instead of
0.9 x 0.9 x 5 mm). ``bash/compare_registration_libraries.py`` runs the 1 mm versions.

The subjects are synthetic whole-head ATLAS subjects (:func:`spinseg.datasets.synthetic.generate_subject`)
with two bright spherical lesions painted in MNI space (the ground truth). The model is a
deterministic test double that segments: a threshold of the *normalised* intensity wrapped as an
``nn.Module`` (it finds the bright lesions, and it sees exactly what a network would see, so
intensity units matter to it as they do to a network). The same check with a trained SPiN is
tests/test_predict_native_trained.py.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from native_scans import (
    COARSE_MNI_SHAPE,
    coarse_template,
    mean_displacement_mm,
    moved_head_box,
    native_grid,
    random_affine,
    sample_on_grid,
)

import spinseg.cli.predict as predict_cli
from spinseg.data.transforms import Normalization
from spinseg.datasets.synthetic import generate_subject, load_head_model
from spinseg.inference import registration, scan
from spinseg.inference.lesion_report import lesion_table, size_bin_label

SHAPE = COARSE_MNI_SHAPE
LESIONS_MNI_MM = ((-26.0, -10.0, 22.0, 9.0), (24.0, -40.0, 8.0, 6.0))  # (x, y, z, radius) in white matter
LESION_LEVEL, THRESHOLD_LEVEL = 2.2, 1.6  # x the white-matter level of the subject
NORMALIZATION = Normalization("standard", [30.20063], [35.221165])


class BrightThresholdModel(torch.nn.Module):
    """Test double of a 2.5-D network: (B, n_chunk, H, W) normalised -> logits (B, 1, H, W) = k (x - t)
    on the centre slice, with t the normalised value of ``threshold_raw``."""

    def __init__(self, threshold_raw: float, n_chunk: int = 5):
        super().__init__()
        self.in_channels = n_chunk
        self.threshold = (threshold_raw - NORMALIZATION.means[0]) / NORMALIZATION.stddevs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 :][:, :1]
        return 40.0 * (centre - self.threshold)


def double_preprocessing():
    """What a checkpoint of the test double would record: 5 slices, ATLAS normalisation, threshold 0.5."""
    from spinseg.recipes.preprocessing import Preprocessing

    return Preprocessing("spin", {}, 5, NORMALIZATION.kind, list(NORMALIZATION.means), list(NORMALIZATION.stddevs), 0.5, "test double")


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice similarity of two boolean arrays."""
    return 2.0 * float((first & second).sum()) / max(float(first.sum() + second.sum()), 1.0)


def spheres(shape, affine) -> np.ndarray:
    """(X, Y, Z) bool: the lesion spheres on a grid."""
    world = (affine[:3, :3] @ np.indices(shape).reshape(3, -1) + affine[:3, 3:4]).reshape((3,) + tuple(shape))
    inside = np.zeros(shape, bool)
    for x, y, z, radius in LESIONS_MNI_MM:
        inside |= ((world - np.array([x, y, z])[:, None, None, None]) ** 2).sum(0) <= radius**2
    return inside


class Study:
    """The synthetic subject in MNI space and as native scans, written once for the module."""

    def __init__(self, root: Path):
        self.root = root
        grid = coarse_template()
        subject = generate_subject(0, seed=5, shape=SHAPE)
        self.white_matter = load_head_model(SHAPE).scale  # raw white-matter level of the synthetic subject
        self.truth_mni = spheres(SHAPE, grid.affine)
        self.mni = np.where(self.truth_mni, LESION_LEVEL * self.white_matter, subject["t1"]).astype(np.float32)
        self.affine_mni = grid.affine
        self.moves = {}
        self.truths = {}
        (root / "mni").mkdir(parents=True)
        nib.save(nib.Nifti1Image(self.mni, grid.affine), root / "mni" / "subject_mni.nii.gz")
        nib.save(nib.Nifti1Image(self.mni * 12, grid.affine), root / "mni" / "subject_mni_x12.nii.gz")
        (root / "native").mkdir()
        for kind, seed, voxel in (("sagittal", 1, (2.0, 2.0, 2.0)), ("axial", 2, (1.8, 1.8, 5.0))):
            moving = random_affine(np.random.default_rng(seed))
            low, high = moved_head_box(self.mni, grid.affine, moving)
            shape, affine = native_grid(kind, low, high, voxel)
            volume = sample_on_grid(self.mni, grid.affine, moving, shape, affine)
            self.moves[kind], self.truths[kind] = moving, sample_on_grid(self.truth_mni.astype(np.float32), grid.affine, moving, shape, affine) >= 0.5
            nib.save(nib.Nifti1Image(volume, affine), root / "native" / f"{kind}.nii.gz")
            if kind == "sagittal":
                nib.save(nib.Nifti1Image(volume * 12, affine), root / "native" / "sagittal_x12.nii.gz")

    def model(self) -> BrightThresholdModel:
        """The test double, thresholding at 1.6 x the white-matter level (in training units)."""
        return BrightThresholdModel(THRESHOLD_LEVEL * self.white_matter)


def run_cli(study: Study, monkeypatch, *arguments: str) -> int:
    """``spinseg predict`` with the test double and the coarse template."""
    monkeypatch.setattr(scan, "template_grid", coarse_template)
    monkeypatch.setattr(predict_cli, "load_predict_model", lambda *args: (study.model(), double_preprocessing()))
    checkpoint = study.root / "unused.pth"
    checkpoint.write_bytes(b"")
    return predict_cli.main(["--checkpoint", str(checkpoint), "--device", "cpu", "--plain_inference", *arguments])


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One ``--register`` run over the native scans (the expensive part, shared by the tests below)."""
    study = Study(tmp_path_factory.mktemp("study"))
    output = study.root / "out_registered"
    with pytest.MonkeyPatch.context() as monkeypatch:
        status = run_cli(study, monkeypatch, "--input", str(study.root / "native"), "--output", str(output),
                         "--register", "--save_mni", "--save_probability", "--test_time_flip")
    return study, output, status


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_registration_recovers_the_known_affine_and_saves_an_itk_transform(registered):
    import SimpleITK as sitk

    study, output, status = registered
    assert status == 0
    grid = coarse_template()
    _, brain = registration.template_volumes(grid)
    points = (grid.affine[:3, :3] @ np.argwhere(brain).T + grid.affine[:3, 3:4]).T
    for kind in ("sagittal", "axial"):
        report = json.loads((output / f"{kind}_report.json").read_text())
        recovered = np.asarray(report["registration"]["template_to_scan_ras"])
        assert mean_displacement_mm(recovered, study.moves[kind], points) < 2.0, kind
        # The saved transform, read back by ITK itself, is the same map.
        transform = sitk.ReadTransform(str(output / f"{kind}_to_mni.tfm"))
        affine = sitk.AffineTransform(3)
        affine.SetFixedParameters(transform.GetFixedParameters())
        affine.SetParameters(transform.GetParameters())
        np.testing.assert_allclose(registration.transform_matrix_ras(affine), recovered, atol=1e-4)


def test_native_mask_is_on_the_scan_grid_and_nearly_as_good_as_in_mni_space(registered, tmp_path, monkeypatch):
    study, output, _ = registered
    # The same subject in MNI space (on the template grid): the Dice the model reaches there.
    mni_output = tmp_path / "mni"
    assert run_cli(study, monkeypatch, "--input", str(study.root / "mni" / "subject_mni.nii.gz"), "--output", str(mni_output)) == 0
    mni_dice = dice(np.asarray(nib.load(mni_output / "subject_mni_lesion_mask.nii.gz").dataobj) > 0, study.truth_mni)
    assert mni_dice > 0.7  # the test double segments
    for kind in ("sagittal", "axial"):
        source = nib.load(study.root / "native" / f"{kind}.nii.gz")
        mask_image = nib.load(output / f"{kind}_lesion_mask.nii.gz")
        assert mask_image.shape == source.shape
        np.testing.assert_allclose(mask_image.affine, source.affine, atol=1e-5)
        native_dice = dice(np.asarray(mask_image.dataobj) > 0, study.truths[kind])
        assert native_dice >= 0.9 * mni_dice, (kind, native_dice, mni_dice)
        mni_mask = nib.load(output / f"{kind}_mni_lesion_mask.nii.gz")
        assert mni_mask.shape == SHAPE and dice(np.asarray(mni_mask.dataobj) > 0, study.truth_mni) >= 0.9 * mni_dice


def test_intensities_x12_give_the_same_mask_when_registered(registered):
    _, output, _ = registered
    plain = np.asarray(nib.load(output / "sagittal_lesion_mask.nii.gz").dataobj) > 0
    scaled = np.asarray(nib.load(output / "sagittal_x12_lesion_mask.nii.gz").dataobj) > 0
    assert plain.sum() > 0 and dice(plain, scaled) >= 0.98
    report = json.loads((output / "sagittal_x12_report.json").read_text())
    assert report["intensity"]["mode"] == "standardize"
    assert report["intensity"]["scale_applied"] == pytest.approx(
        json.loads((output / "sagittal_report.json").read_text())["intensity"]["scale_applied"] / 12, rel=0.02)


def test_lesion_csv_and_summary_csv(registered):
    _, output, _ = registered
    rows = read_csv(output / "sagittal_lesions.csv")
    assert len(rows) >= 2
    assert [int(row["lesion_id"]) for row in rows] == list(range(1, len(rows) + 1))
    assert int(rows[0]["voxels"]) >= int(rows[1]["voxels"])
    # The largest lesion is the 9 mm sphere: its MNI centroid is where it was painted.
    assert np.linalg.norm([float(rows[0][f"centroid_mni_{axis}_mm"]) for axis in "xyz"] - np.array(LESIONS_MNI_MM[0][:3])) < 3.0
    for row in rows:
        assert 0.5 < float(row["mean_probability"]) <= float(row["max_probability"]) <= 1.0
        assert 0.0 <= float(row["both_passes_fraction"]) <= 1.0
    summary = {row["scan"]: row for row in read_csv(output / "summary.csv")}
    assert set(summary) == {"sagittal", "sagittal_x12", "axial"}
    report = json.loads((output / "sagittal_report.json").read_text())
    assert summary["sagittal"]["status"] == "ok" and int(summary["sagittal"]["lesion_count"]) == report["n_lesions"] == len(rows)
    assert float(summary["sagittal"]["total_ml"]) == pytest.approx(sum(float(row["volume_ml"]) for row in rows), rel=1e-3)
    assert (output / "sagittal_qc.png").read_bytes()[:4] == b"\x89PNG"


def test_without_register_todays_warnings_stay_and_x12_is_no_longer_silent(registered, tmp_path, monkeypatch, capsys):
    study, _, _ = registered
    assert run_cli(study, monkeypatch, "--input", str(study.root / "mni"), "--output", str(tmp_path / "mni")) == 0
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "subject_mni_x12" in lines[0] and "--intensity standardize" in lines[0]
    summary = {row["scan"]: row for row in read_csv(tmp_path / "mni" / "summary.csv")}
    assert summary["subject_mni"]["warnings"] == "" and "the training data's" in summary["subject_mni_x12"]["warnings"]
    plain_ratio = float(summary["subject_mni"]["intensity_ratio"])
    assert 1 / 1.5 < plain_ratio < 1.5 and float(summary["subject_mni_x12"]["intensity_ratio"]) == pytest.approx(plain_ratio / 12, rel=1e-3)
    # A native scan without --register: today's "does not look registered" warning.
    assert run_cli(study, monkeypatch, "--input", str(study.root / "native" / "sagittal.nii.gz"), "--output", str(tmp_path / "native")) == 0
    assert "does not look registered to MNI152" in capsys.readouterr().err
    # --intensity standardize without registration makes the x12 scan's mask the plain one's.
    assert run_cli(study, monkeypatch, "--input", str(study.root / "mni"), "--output", str(tmp_path / "standardized"),
                   "--intensity", "standardize") == 0
    masks = [np.asarray(nib.load(tmp_path / "standardized" / f"{name}_lesion_mask.nii.gz").dataobj) > 0
             for name in ("subject_mni", "subject_mni_x12")]
    assert masks[0].sum() > 0 and dice(*masks) >= 0.98


def test_bids_dataset_gives_derivatives_and_one_bad_scan_is_skipped(registered, tmp_path, monkeypatch, capsys):
    study, _, _ = registered
    dataset = tmp_path / "bids"
    image = nib.load(study.root / "mni" / "subject_mni.nii.gz")
    for relative in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"):
        (dataset / relative).parent.mkdir(parents=True)
        nib.save(image, dataset / relative)
    (dataset / "sub-03" / "anat").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), dataset / "sub-03" / "anat" / "sub-03_T1w.nii.gz")
    (dataset / "dataset_description.json").write_text('{"Name": "test", "BIDSVersion": "1.9.0"}')
    status = run_cli(study, monkeypatch, "--input", str(dataset), "--output", str(tmp_path / "out"))
    assert status == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sub-03_T1w.nii.gz" in errors[0] and "2-D" in errors[0]
    root = tmp_path / "out" / "derivatives" / "spinseg"
    assert json.loads((root / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    for folder, base in (("sub-01/anat", "sub-01"), ("sub-02/ses-1/anat", "sub-02_ses-1")):
        for ending in ("_label-lesion_mask.nii.gz", "_desc-lesions_table.csv", "_desc-spinseg_report.json", "_desc-qc_T1w.png"):
            assert (root / folder / f"{base}{ending}").is_file(), f"{folder}/{base}{ending}"
    assert not (root / "sub-03").exists()
    summary = read_csv(root / "summary.csv")
    assert [row["status"] for row in summary] == ["ok", "ok", "failed"]


def test_lesion_table_by_hand():
    mask = np.zeros((12, 10, 8), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[6:9, 5:8, 4:6] = 1  # 18 voxels, the largest
    probabilities = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    probabilities[1, 1, 1] = 0.95
    both = mask > 0
    both[6, 5, 4:6] = False  # 2 of 18 voxels found by one pass only
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm^3 voxels
    rows = lesion_table(mask, probabilities, affine, lambda points: points + 100.0, both)
    assert [row["voxels"] for row in rows] == [18, 8]
    assert rows[0]["volume_ml"] == pytest.approx(18 * 8 / 1000)
    assert [rows[0][f"centroid_scan_{axis}_mm"] for axis in "xyz"] == [14.0, 12.0, 9.0]  # voxel (7, 6, 4.5) x 2 mm
    assert rows[0]["centroid_mni_x_mm"] == 114.0
    assert rows[0]["size_bin"] == "101-1000" and rows[1]["size_bin"] == "<=100"  # 144 and 64 mm^3
    assert rows[1]["max_probability"] == pytest.approx(0.95) and rows[1]["mean_probability"] == pytest.approx((0.95 + 7 * 0.8) / 8, abs=1e-4)
    assert rows[0]["both_passes_fraction"] == pytest.approx(16 / 18, abs=1e-4)
    assert size_bin_label(100) == "<=100" and size_bin_label(101) == "101-1000" and size_bin_label(10001) == ">10000"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.02, 0.4))
def test_component_statistics_match_scipy_over_the_whole_volume(seed, density):
    """The lesion table's statistics over lesion voxels only equal scipy.ndimage's labelled ones over every voxel."""
    from scipy import ndimage

    from spinseg.lesions import ComponentVoxels, label_components

    rng = np.random.default_rng(seed)
    mask = rng.random((9, 7, 6)) < density
    values = rng.random(mask.shape).astype(np.float32)
    labels, count = label_components(mask, 26)
    components = ComponentVoxels(labels, count)
    indices = np.arange(1, count + 1)
    assert components.sizes.tolist() == [int((labels == index).sum()) for index in indices]
    if count:
        np.testing.assert_allclose(components.centroids(), np.asarray(ndimage.center_of_mass(mask, labels, indices)), atol=1e-9)
        np.testing.assert_allclose(components.means(values), ndimage.mean(values, labels, indices), rtol=1e-6)
        np.testing.assert_array_equal(components.maxima(values), ndimage.maximum(values, labels, indices))


def test_template_head_cache_returns_what_it_stored_and_rebuilds_a_broken_file(tmp_path, monkeypatch):
    """The on-disk template cache gives the same arrays as building them; a corrupt file is rebuilt, an
    unwritable folder only costs time."""
    monkeypatch.setenv("SPINSEG_CACHE_DIR", str(tmp_path / "cache"))
    grid = registration.working_grid(coarse_template())
    shape, affine_bytes = tuple(grid.shape), np.asarray(grid.affine, dtype=float).tobytes()
    built_head, built_brain = registration.template_images(shape, affine_bytes)
    registration.cached_template_images.cache_clear()
    head, brain = registration.template_volumes(grid)
    (stored,) = list((tmp_path / "cache").glob("template_head_*.npz"))
    np.testing.assert_array_equal(head, built_head)
    np.testing.assert_array_equal(brain, built_brain)

    calls = []
    monkeypatch.setattr(registration, "template_images", lambda *args: calls.append(args) or (built_head, built_brain))
    registration.cached_template_images.cache_clear()
    head, _ = registration.template_volumes(grid)  # read back: nothing built
    assert calls == [] and head.dtype == np.float32
    np.testing.assert_array_equal(head, built_head)

    stored.write_bytes(b"not a zip file")
    registration.cached_template_images.cache_clear()
    registration.template_volumes(grid)
    assert len(calls) == 1 and np.load(stored)["head"].shape == shape  # rebuilt and rewritten

    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setenv("SPINSEG_CACHE_DIR", str(tmp_path / "blocked"))
    registration.cached_template_images.cache_clear()
    _, brain = registration.template_volumes(grid)
    assert len(calls) == 2 and brain.dtype == bool
    registration.cached_template_images.cache_clear()
