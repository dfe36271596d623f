"""Helpers shared by the tests: the subprocess runner, small data sets, and raw dataset trees.

Test files import these by name (``from conftest import write_volume_set``); no test file imports
another test file. Sections:

* running the commands: :func:`subprocess_environment`, :func:`run_python`, :func:`assert_one_line_error`;
* prepared data and models: :func:`write_volume_set`, ``SMALL_SPIN_CONFIG``, parameter counts, gradients;
* a short deterministic training run: :func:`training_command`, :func:`assert_same_tensors`;
* raw trees in the published layouts: ATLAS (good subjects + ``BREAKERS``), GLaS, RITE.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture(autouse=True, scope="session")
def private_template_cache(tmp_path_factory):
    """Template heads built by the tests (coarse grids included) go to a folder of the session, not the
    user's ~/.cache/spinseg; commands run in subprocesses inherit it through the environment."""
    previous = os.environ.get("SPINSEG_CACHE_DIR")
    os.environ["SPINSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("spinseg_cache"))
    yield
    if previous is None:
        os.environ.pop("SPINSEG_CACHE_DIR", None)
    else:
        os.environ["SPINSEG_CACHE_DIR"] = previous


# ----------------------------------------------------------------------------------------------
# Running the commands in a fresh interpreter.
# ----------------------------------------------------------------------------------------------


def subprocess_environment(**extra: str) -> dict:
    """Environment in which ``python -m spinseg...`` runs the same spinseg as this test process imports
    (its ``src`` first on PYTHONPATH, whatever copy is pip-installed), plus ``extra`` variables."""
    import spinseg

    source = str(Path(spinseg.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])), **extra}


def run_python(arguments: list[str], cwd: Path | None = None, timeout: float = 120,
               environment: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``python <arguments>`` (this interpreter, :func:`subprocess_environment` unless given)
    and captures its output as text."""
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, cwd=cwd,
                          env=environment if environment is not None else subprocess_environment(), timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess) -> str:
    """Exit code 2, exactly one non-empty stderr line, no traceback; returns that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Prepared volumes (.npy + lists) and model helpers.
# ----------------------------------------------------------------------------------------------


# A small SPiN (fewer features) that trains in seconds on the CPU.
SMALL_SPIN_CONFIG = str(TESTS / "fixtures" / "spin_small_config.json")


def write_volume_set(directory: Path, n_subjects: int, shape=(32, 36, 12), seed: int = 0, prefix: str = "c0001s"):
    """Writes n_subjects ATLAS-named scan/mask pairs and returns (scans list path, masks list path)."""
    rng = np.random.default_rng(seed)
    scans, masks = [], []
    for index in range(n_subjects):
        subject = f"{prefix}{index:04d}t01"
        folder = directory / subject[:5] / subject
        folder.mkdir(parents=True, exist_ok=True)
        scan = rng.normal(70.0, 6.0, shape).astype(np.float32)
        mask = np.zeros(shape, dtype=np.uint8)
        centre = rng.integers(8, np.array(shape[:2]) - 8)
        depth = rng.integers(3, shape[2] - 3)
        size = rng.integers(3, 6)
        mask[centre[0] - size : centre[0] + size, centre[1] - size : centre[1] + size, depth - 2 : depth + 2] = 1
        scan[mask > 0] = rng.normal(15.0, 4.0, int(mask.sum()))
        scan_path = folder / f"{subject}_t1w_stx.npy"
        mask_path = folder / f"{subject}_LesionSmooth_stx.npy"
        np.save(scan_path, scan)
        np.save(mask_path, mask)
        scans.append(str(scan_path))
        masks.append(str(mask_path))
    scans_list, masks_list = directory / "scans.txt", directory / "masks.txt"
    scans_list.write_text("\n".join(scans) + "\n")
    masks_list.write_text("\n".join(masks) + "\n")
    return scans_list, masks_list


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(parameter.numel() for parameter in model.parameters())


def documented_parameter_count(cls: type) -> int:
    """The count a model class states in its docstring ("Parameters at defaults: N")."""
    match = re.search(r"Parameters at defaults: ([\d,]+)", cls.__doc__)
    assert match, f"{cls.__name__} docstring must state its parameter count"
    return int(match.group(1).replace(",", ""))


def assert_finite_gradients(model: torch.nn.Module) -> None:
    """Every trainable parameter got a finite gradient."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"


# The fixture SPiN in the release's checkpoint format (small config: SMALL_SPIN_CONFIG).
SMALL_SPIN_RELEASE_CHECKPOINT = str(TESTS / "fixtures" / "spin_small_original_format.pth")


# ----------------------------------------------------------------------------------------------
# Synthetic NIfTI brains on MNI-like grids (predict and score tests).
# ----------------------------------------------------------------------------------------------

LESION_CENTRE_MM = np.array([-30.0, -20.0, 10.0])  # left hemisphere, deep white matter
LESION_RADIUS_MM = 6.0
BRAIN, LESION = 100.0, 20.0  # raw intensities: bright tissue, dark lesion, background 0


def world_coordinates(shape, affine) -> np.ndarray:
    """World mm of every voxel centre: (3, X, Y, Z)."""
    ijk = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3,) + tuple(shape))


def coarse_template():
    """A 4 mm ``spinseg.inference.scan.Grid`` over the MNI template's box (50, 59, 48): the pipeline
    at a size a test can afford."""
    from spinseg.inference import scan as predict

    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-98.0, -134.0, -72.0]
    return predict.Grid((50, 59, 48), affine)


def ellipsoid_brain(shape, affine, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic skull-stripped T1 on a grid: bright noisy ellipsoid, dark lesion sphere -> (volume, lesion)."""
    world = world_coordinates(shape, affine)
    inside = (((world - np.array([0.0, -18.0, 15.0])[:, None, None, None]) / np.array([65.0, 85.0, 60.0])[:, None, None, None]) ** 2).sum(0) <= 1
    lesion = ((world - LESION_CENTRE_MM[:, None, None, None]) ** 2).sum(0) <= (2 * LESION_RADIUS_MM) ** 2
    volume = np.where(inside, BRAIN, 0.0) + np.random.default_rng(seed).normal(0, 3, shape) * inside
    volume[lesion] = LESION
    return volume.astype(np.float32), lesion


# ----------------------------------------------------------------------------------------------
# A short deterministic CPU training run (resume and determinism tests).
# ----------------------------------------------------------------------------------------------


def write_training_data(directory: Path) -> Path:
    """Four 24x28x10 volumes with one cubic lesion each (``scans.txt`` / ``masks.txt`` in ``directory``)."""
    write_volume_set(directory, 4, shape=(24, 28, 10), seed=1)
    return directory


def training_command(data: Path, run: Path, *extra: str, max_steps: int = 12, checkpoint_every: int = 2) -> list[str]:
    """``python -m spinseg.train`` on :func:`write_training_data`'s volumes into ``run``: batch 2
    (2 steps per epoch), validation every 4 steps, deterministic, seed 3, one thread; ``extra`` flags last."""
    scans, masks = data / "scans.txt", data / "masks.txt"
    return [
        sys.executable, "-m", "spinseg.train",
        "--train_multimodal_scan_paths", str(scans), "--train_ground_truth_path", str(masks),
        "--val_multimodal_scan_paths", str(scans), "--val_ground_truth_path", str(masks),
        "--model_config", SMALL_SPIN_CONFIG, "--n_batch", "2",
        # The schedules change mid-run (epoch 3), so a resume has to land on the right learning rate.
        "--learning_rates", "2e-3", "1e-3", "--learning_schedule", "3", "6",
        "--augmentation_probabilities", "1.0", "0.5", "--augmentation_schedule", "3", "6",
        "--deterministic", "--seed", "3", "--n_checkpoint", str(checkpoint_every), "--n_validation", "4",
        "--n_summary", "5", "--max_steps", str(max_steps), "--n_workers", "0", "--n_thread", "1",
        "--device", "cpu", "--checkpoint_path", str(run), *extra,
    ]


def assert_same_tensors(expected, found, where: str = "") -> None:
    """torch.equal on every tensor of two nested dict/list structures (weights, optimizer state)."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, found), f"{where} differs"
    elif isinstance(expected, dict):
        assert set(expected) == set(found), f"{where} keys differ"
        for key in expected:
            assert_same_tensors(expected[key], found[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(found), f"{where} lengths differ"
        for index, (a, b) in enumerate(zip(expected, found)):
            assert_same_tensors(a, b, f"{where}[{index}]")
    else:
        assert expected == found, f"{where}: {expected!r} != {found!r}"


# ----------------------------------------------------------------------------------------------
# Raw ATLAS trees of tiny NIfTI volumes, and the ways one subject can be broken.
# ----------------------------------------------------------------------------------------------


def save_nifti(path: Path, array: np.ndarray) -> None:
    """Writes ``array`` as NIfTI with an identity affine, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def write_raw_atlas_subject(root: Path, subject: str, extension: str = ".nii.gz") -> Path:
    """One good raw ATLAS subject folder: a (6, 7, 5) T1 and its lesion mask; returns the folder."""
    folder = root / subject[:5] / subject
    rng = np.random.default_rng(0)
    save_nifti(folder / f"{subject}_t1w_stx{extension}", rng.random((6, 7, 5)).astype(np.float32))
    mask = np.zeros((6, 7, 5), dtype=np.uint8)
    mask[2:4, 2:4, 1:3] = 1
    save_nifti(folder / f"{subject}_LesionSmooth_stx{extension}", mask)
    return folder


# The subject each breaker breaks.
BAD = "c0004s0002t01"


def break_no_t1(folder):
    (folder / f"{BAD}_t1w_stx.nii.gz").unlink()
    return folder


def break_no_mask(folder):
    (folder / f"{BAD}_LesionSmooth_stx.nii.gz").unlink()
    return folder


def break_two_t1(folder):
    shutil.copy(folder / f"{BAD}_t1w_stx.nii.gz", folder / f"{BAD}_t1w_deface_stx.nii.gz")
    return folder


def break_mask_shape(folder):
    path = folder / f"{BAD}_LesionSmooth_1_stx.nii.gz"
    save_nifti(path, np.zeros((6, 7, 4), dtype=np.uint8))
    return path


def break_truncated(folder):
    path = folder / f"{BAD}_t1w_stx.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def break_truncated_data(folder):
    # A header that reads fine and data that end early: the error only shows when decompressing.
    path = folder / f"{BAD}_t1w_stx.nii.gz"
    save_nifti(path, np.random.default_rng(1).random((40, 40, 40)).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    return path


def break_text_file(folder):
    path = folder / f"{BAD}_LesionSmooth_stx.nii.gz"
    path.write_text("this is not an image\n")
    return path


def break_plain_text_nii(folder):
    path = folder / f"{BAD}_t1w_stx.nii.gz"
    path.unlink()
    path = folder / f"{BAD}_t1w_stx.nii"
    path.write_text("not a nifti either\n" * 40)
    return path


def break_two_dimensional(folder):
    path = folder / f"{BAD}_t1w_stx.nii.gz"
    save_nifti(path, np.ones((6, 7), dtype=np.float32))
    return path


def break_four_dimensional(folder):
    path = folder / f"{BAD}_LesionSmooth_stx.nii.gz"
    save_nifti(path, np.zeros((6, 7, 5, 2), dtype=np.uint8))
    return path


def break_nan(folder):
    path = folder / f"{BAD}_t1w_stx.nii.gz"
    volume = np.ones((6, 7, 5), dtype=np.float32)
    volume[1, 2, 3] = np.nan
    save_nifti(path, volume)
    return path


def break_inf_mask(folder):
    path = folder / f"{BAD}_LesionSmooth_stx.nii.gz"
    volume = np.zeros((6, 7, 5), dtype=np.float32)
    volume[0, 0, 0] = np.inf
    save_nifti(path, volume)
    return path


# {case: (breaker(folder of BAD) -> the path it broke, words the one-line error must contain)}
BREAKERS = {
    "no T1": (break_no_t1, "no T1"),
    "no mask": (break_no_mask, "no lesion mask"),
    "two T1s": (break_two_t1, "2 T1 scans"),
    "mask shape": (break_mask_shape, "mask shape (6, 7, 4) != scan shape (6, 7, 5)"),
    "truncated gzip": (break_truncated, "unreadable"),
    "truncated data": (break_truncated_data, "unreadable"),
    "text named .nii.gz": (break_text_file, "unreadable"),
    "text named .nii": (break_plain_text_nii, "unreadable"),
    "2-D": (break_two_dimensional, "3-D"),
    "4-D": (break_four_dimensional, "3-D"),
    "NaN": (break_nan, "NaN/Inf"),
    "Inf in mask": (break_inf_mask, "NaN/Inf"),
}


def write_raw_atlas_tree(root: Path) -> Path:
    """``root/raw``: three good raw subjects (one as plain .nii), BAD among them, and ``root/split`` lists; returns ``root/raw``."""
    raw = root / "raw"
    write_raw_atlas_subject(raw, "c0003s0001t01")
    write_raw_atlas_subject(raw, BAD)
    write_raw_atlas_subject(raw, "c0005s0003t01", extension=".nii")
    split = root / "split/traintest"
    split.mkdir(parents=True)
    (split / "train_subjects.txt").write_text("c0003s0001t01\nc0004s0002t01\n")
    (split / "test_subjects.txt").write_text("c0005s0003t01\n")
    return raw


# ----------------------------------------------------------------------------------------------
# Tiny raw GLaS and RITE trees in exactly the published layouts, written with Pillow.
#
# GLaS: one folder of ``<group>_<N>.bmp`` (RGB) + ``<group>_<N>_anno.bmp`` (8-bit instance labels 0..K,
# palette-encoded for even N and grayscale for odd N, as both occur) + ``Grade.csv``.
# RITE: ``AV_groundTruth/{training,test}/{images,av,vessel}/`` with ``NN_<split>.tif`` RGB TIFFs,
# ``vessel/NN_<split>.png`` 0/255 grayscale and ``av/NN_<split>.png`` colour labels.
# ----------------------------------------------------------------------------------------------

# (group, N, (height, width)): varying sizes, as in GLaS.
GLAS_IMAGES = [
    ("train", 1, (40, 50)),
    ("train", 2, (36, 44)),
    ("train", 3, (40, 50)),
    ("testA", 1, (38, 48)),
    ("testA", 2, (40, 50)),
    ("testB", 1, (34, 46)),
]
RITE_SHAPE = (44, 40)  # (height, width); the real images are 584 x 565
RITE_IMAGES = {"training": ["21", "22"], "test": ["01", "02"]}
AV_COLOURS = {"artery": (255, 0, 0), "vein": (0, 0, 255), "crossing": (0, 255, 0), "uncertain": (255, 255, 255)}


def gland_labels(shape, rng: np.random.Generator, n_glands: int = 3) -> np.ndarray:
    """uint8 (H, W) instance labels: ``n_glands`` rectangles numbered 1..K on background 0."""
    labels = np.zeros(shape, dtype=np.uint8)
    for instance in range(1, n_glands + 1):
        top, left = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        height, width = rng.integers(4, 9), rng.integers(4, 9)
        labels[top : top + height, left : left + width] = instance
    return labels


def write_glas_tree(directory: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes the GLaS layout into ``directory``; returns {name: (image uint8 (H, W, 3), labels (H, W))}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for group, number, shape in GLAS_IMAGES:
        labels = gland_labels(shape, rng)
        image = rng.integers(150, 230, shape + (3,), dtype=np.uint8)
        image[labels > 0] = (rng.integers(40, 90, (int((labels > 0).sum()), 3))).astype(np.uint8)
        Image.fromarray(image, "RGB").save(directory / f"{group}_{number}.bmp", format="BMP")
        label_image = Image.fromarray(labels, "L")
        if number % 2 == 0:
            # Palette-encoded, with colours unrelated to the indices: the indices are the labels.
            label_image = label_image.convert("P")
            label_image.putpalette([value for index in range(256) for value in ((index * 37) % 256, 255 - index, index)])
        label_image.save(directory / f"{group}_{number}_anno.bmp", format="BMP")
        written[f"{group}_{number}"] = (image, labels)
    (directory / "Grade.csv").write_text("name,patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)\ntrain_1,1,malignant,adenomatous\n")
    return written


def vessel_tree(shape, rng: np.random.Generator) -> np.ndarray:
    """bool (H, W): a few horizontal and vertical one-to-two-pixel 'vessels'."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(3):
        row, column = rng.integers(2, shape[0] - 2), rng.integers(2, shape[1] - 2)
        mask[row : row + rng.integers(1, 3), :] = True
        mask[:, column : column + rng.integers(1, 3)] = True
    return mask


def write_rite_tree(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Writes ``root/AV_groundTruth/...``; returns {stem: (image (H, W, 3), vessel bool (H, W), av (H, W, 3))}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, numbers in RITE_IMAGES.items():
        for kind in ("images", "av", "vessel"):
            (root / "AV_groundTruth" / split / kind).mkdir(parents=True, exist_ok=True)
        for number in numbers:
            stem = f"{number}_{split}"
            vessels = vessel_tree(RITE_SHAPE, rng)
            image = rng.integers(60, 120, RITE_SHAPE + (3,), dtype=np.uint8)
            image[vessels] = 20
            av = np.zeros(RITE_SHAPE + (3,), dtype=np.uint8)
            colours = np.array(list(AV_COLOURS.values()), dtype=np.uint8)
            av[vessels] = colours[rng.integers(0, len(colours), int(vessels.sum()))]
            base = root / "AV_groundTruth" / split
            Image.fromarray(image, "RGB").save(base / "images" / f"{stem}.tif", format="TIFF")
            Image.fromarray(vessels.astype(np.uint8) * 255, "L").save(base / "vessel" / f"{stem}.png", format="PNG")
            Image.fromarray(av, "RGB").save(base / "av" / f"{stem}.png", format="PNG")
            written[stem] = (image, vessels, av)
    return written
