"""Bad input to the command-line tools ends with one line naming the file and the problem, exit code 2.

Every case runs the real command (``python -m spinseg.train`` / ``python -m spinseg.evaluate``) in a
subprocess; the cases run concurrently to keep the suite quick. ``python tests/test_bad_inputs.py
docs/bad_inputs.md`` regenerates the table in the docs from the same cases (plus the raw-NIfTI cases
of ``setup/setup_dataset_atlas.py``), so the documented messages are the ones users get.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import zipfile
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # for `conftest` when run as a script

from conftest import SMALL_SPIN_CONFIG, assert_one_line_error, run_python, write_volume_set  # noqa: E402

RELEASE_CHECKPOINT = TESTS / "fixtures" / "spin_small_original_format.pth"
SMALL_UNET_CONFIG = {"n_filters_encoder_segmentation": [4, 4, 8, 8, 8], "n_filters_decoder_segmentation": [8, 8, 4, 4]}
SHAPE = (24, 28, 10)


def without_overridden(flag_and_value: list[str], extra: tuple[str, ...]) -> list[str]:
    """``flag_and_value`` unless ``extra`` sets that flag itself (keeps the shown commands free of repeats)."""
    return [] if flag_and_value[0] in extra else flag_and_value


class Workspace:
    """A folder with a good tiny data set; the cases write their bad files next to it."""

    def __init__(self, root: Path):
        self.root = root
        self.scans_list, self.masks_list = write_volume_set(root / "good", 2, shape=SHAPE, seed=4)
        self.scans = self.scans_list.read_text().split()
        self.masks = self.masks_list.read_text().split()

    def path(self, name: str) -> Path:
        return self.root / name

    def save(self, name: str, array: np.ndarray) -> str:
        path = self.path(name)
        np.save(path, array, allow_pickle=True)  # allow_pickle so that an object array can be written at all
        return str(path)

    def lists(self, name: str, scans: list[str], masks: list[str]) -> tuple[str, str]:
        """Writes a scans list and a masks list named after the case."""
        scans_list, masks_list = self.path(f"{name}_scans.txt"), self.path(f"{name}_masks.txt")
        scans_list.write_text("".join(f"{line}\n" for line in scans))
        masks_list.write_text("".join(f"{line}\n" for line in masks))
        return str(scans_list), str(masks_list)

    def train(self, name: str, scans_list: str | None = None, masks_list: str | None = None, *extra: str) -> list[str]:
        """A 1-step training command on the tiny data; ``extra`` flags override."""
        return [
            "-m", "spinseg.train",
            "--train_multimodal_scan_paths", scans_list or str(self.scans_list),
            "--train_ground_truth_path", masks_list or str(self.masks_list),
            "--model_config", SMALL_SPIN_CONFIG, "--n_batch", "2", "--max_steps", "1", "--n_workers", "0",
            "--device", "cpu", *without_overridden(["--checkpoint_path", str(self.path(f"run_{name}"))], extra), *extra,
        ]

    def evaluate(self, name: str, scans_list: str | None = None, masks_list: str | None = None, *extra: str) -> list[str]:
        """An evaluation command of the release-format fixture on the tiny data; ``extra`` flags override."""
        return [
            "-m", "spinseg.evaluate",
            "--multimodal_scan_paths", scans_list or str(self.scans_list),
            "--ground_truth_path", masks_list or str(self.masks_list),
            *without_overridden(["--model_config", SMALL_SPIN_CONFIG], extra), "--restore_path", str(RELEASE_CHECKPOINT),
            "--device", "cpu", "--output_path", str(self.path(f"eval_{name}")), *extra,
        ]

    def score(self, name: str, pred: Path, gt: Path, *extra: str) -> list[str]:
        """A ``spinseg.score`` command of two mask folders; ``extra`` flags override."""
        return ["-m", "spinseg.score", "--pred", str(pred), "--gt", str(gt), "--output", str(self.path(f"score_{name}")), *extra]


    def predict(self, name: str, inputs: list[str], *extra: str, output: str | None = None) -> list[str]:
        """A predict command of the release-format fixture (small config) on ``inputs``."""
        return [
            "-m", "spinseg.predict", "--model", "spin", "--checkpoint", str(RELEASE_CHECKPOINT),
            "--model_config", SMALL_SPIN_CONFIG, "--input", *inputs, "--output", output or str(self.path(f"pred_{name}")),
            "--device", "cpu", *extra,
        ]

    def download(self, name: str, zip_path: Path, output_dir: Path, *extra: str) -> list[str]:
        """A download command installing ``zip_path`` (load-checked with the small configs)."""
        return [
            "-m", "spinseg.download", "--zip_path", str(zip_path), "--output_dir", str(output_dir),
            "--check_config", f"spin={SMALL_SPIN_CONFIG}", "--check_config", f"unet={json.dumps(SMALL_UNET_CONFIG)}", *extra,
        ]


@dataclass
class Case:
    """One bad input: how to make it, and what its one-line message must mention."""

    name: str
    problem: str
    command: Callable[[Workspace], list[str]]
    expected: tuple[str, ...]
    # Each run costs a Python + torch start-up (~2 s of CPU); cases whose check is the very code
    # path of another tested case only run for the documentation table.
    tested: bool = True


def bad_scan_list(workspace: Workspace, name: str, array: np.ndarray) -> tuple[str, str]:
    """Lists whose first scan is ``array`` (saved as ``<name>.npy``), other entries good."""
    bad = workspace.save(f"{name}.npy", array)
    return workspace.lists(name, [bad, workspace.scans[1]], workspace.masks)


def shape_mismatch_lists(workspace: Workspace, name: str, second: bool) -> tuple[str, str]:
    """Lists where one mask is a slice shorter than its scan (the second pair: caught before training)."""
    mask = workspace.save(f"{name}_mask.npy", np.zeros(SHAPE[:2] + (SHAPE[2] - 1,), np.uint8))
    masks = [workspace.masks[0], mask] if second else [mask, workspace.masks[1]]
    return workspace.lists(name, workspace.scans, masks)


def bare_unet_state_dict(workspace: Workspace) -> str:
    """A bare ``state_dict`` of a small U-Net: another architecture than SPiN."""
    from spinseg.models import build_model

    path = workspace.path("unet_state_dict.pth")
    torch.save(build_model("unet", input_channels=5, n_filters_encoder_segmentation=[4, 4, 4, 4, 4], n_filters_decoder_segmentation=[4, 4, 4, 4]).state_dict(), path)
    return str(path)



def keras_weights_case(workspace: Workspace, kind: str) -> str:
    """A Keras weights file that cannot be loaded as X-Net: another model's, truncated, or missing a layer."""
    import shutil

    import h5py

    source = TESTS / "fixtures" / "xnet_small_weights.h5"
    path = workspace.path(f"keras_{kind}.h5")
    if kind == "other_model":
        shutil.copy(TESTS / "fixtures" / "clcinet_small_weights.h5", path)
    elif kind == "truncated":
        path.write_bytes(source.read_bytes()[:100_000])
    else:  # the file without its fifth layer (a 1x1 convolution), as if a layer had been cut out
        shutil.copy(source, path)
        with h5py.File(path, "r+") as handle:
            names = list(handle.attrs["layer_names"])
            handle.attrs["layer_names"] = np.array(names[:4] + names[5:])
    return str(path)


def other_width_kiunet_state_dict(workspace: Workspace) -> str:
    """The release's KiU-Net state dict with its first encoder convolution 24 channels wide instead of 16."""
    state = torch.load(TESTS / "fixtures" / "kiunet_release_state_dict.pth", map_location="cpu", weights_only=True)
    state["encoder1.weight"] = torch.zeros(24, 1, 3, 3)
    path = workspace.path("kiunet_other_width.pth")
    torch.save(state, path)
    return str(path)



def blocked_checkpoint_folder(workspace: Workspace) -> Path:
    """A run folder whose ``checkpoints`` is a regular file, so the folder cannot be made."""
    run = workspace.path("blocked")
    run.mkdir(exist_ok=True)
    (run / "checkpoints").write_text("in the way")
    return run


def nifti_scan(workspace: Workspace, name: str, array: np.ndarray, voxel_mm: float = 1.0) -> str:
    """Writes ``array`` as ``<name>.nii.gz`` (RAS, ``voxel_mm`` voxels, centred on the origin) and returns its path."""
    import nibabel as nib

    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -voxel_mm * (np.asarray((tuple(array.shape) + (1, 1, 1))[:3]) - 1) / 2
    path = workspace.path(f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)
    return str(path)


def bids_without_t1w(workspace: Workspace) -> str:
    """A BIDS dataset whose only subject has a FLAIR but no T1w scan."""
    root = workspace.path("bids_no_t1w")
    (root / "sub-01" / "anat").mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "no T1w", "BIDSVersion": "1.9.0"}')
    nifti_scan(workspace, "bids_no_t1w/sub-01/anat/sub-01_FLAIR", np.ones((8, 8, 8)))
    return str(root)


def predict(workspace: Workspace, name: str, inputs: str, *extra: str) -> list[str]:
    """A predict command of the release-format fixture writing to ``pred_<name>``; ``extra`` flags added."""
    return ["-m", "spinseg.predict", "--checkpoint", str(RELEASE_CHECKPOINT), "--model_config", SMALL_SPIN_CONFIG,
            "--device", "cpu", "--input", inputs, "--output", str(workspace.path(f"pred_{name}")), *extra]


NOISE_HEAD = np.random.default_rng(14).uniform(0, 100, (64, 64, 64))  # 3 mm voxels: a head-sized box of noise
SLAB = np.random.default_rng(15).uniform(0, 100, (180, 200, 12))  # 12 slices of 1 mm: misses most of any brain


def mask_folders(workspace: Workspace, name: str, prediction: np.ndarray | str | None = None,
                 prediction_affine: np.ndarray | None = None) -> tuple[Path, Path]:
    """Folders ``<name>_pred`` and ``<name>_gt`` with NIfTI masks of subjects a and b; subject a's prediction
    is replaced by ``prediction`` (an array, or text written under a NIfTI name; None: left out entirely)."""
    import nibabel

    pred, gt = workspace.path(f"{name}_pred"), workspace.path(f"{name}_gt")
    pred.mkdir()
    gt.mkdir()
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:8, 5:9, 2:5] = 1
    for subject in ("a", "b"):
        nibabel.save(nibabel.Nifti1Image(mask, np.eye(4)), gt / f"{subject}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(mask, np.eye(4)), pred / f"{subject}.nii.gz")
    if isinstance(prediction, str):
        (pred / "a.nii.gz").write_text(prediction)
    elif prediction is not None:
        nibabel.save(nibabel.Nifti1Image(prediction, np.eye(4) if prediction_affine is None else prediction_affine), pred / "a.nii.gz")
    else:
        for path in pred.iterdir():
            path.unlink()
    return pred, gt


def nan_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.float32)
    mask[1, 2, 3] = np.nan
    return mask

def our_spin_checkpoint(workspace: Workspace) -> str:
    """One of our checkpoints of the small SPiN (5 slices, ATLAS normalisation recorded)."""
    from spinseg.checkpoint import save_checkpoint
    from spinseg.models import build_model
    from spinseg.models.model_config import parse_model_config
    from spinseg.recipes.config import TrainConfig
    from spinseg.recipes.preprocessing import preprocessing_record

    path = workspace.path("ours_spin.pth")
    model = build_model("spin", **{**parse_model_config(SMALL_SPIN_CONFIG), "input_channels": 5})
    model.preprocessing = preprocessing_record(TrainConfig())
    save_checkpoint(path, model)
    return str(path)



# ---------------------------------------------------------------------------------------------
# Builders of the hostile inputs of the second reliability round.


def lying_npy(workspace: Workspace, name: str, shape: tuple[int, ...]) -> str:
    """A .npy whose header claims ``shape`` float32 but which holds 64 bytes of data."""
    path = workspace.path(f"{name}.npy")
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, {"descr": "<f4", "fortran_order": False, "shape": shape})
        stream.write(bytes(64))
    return str(path)


def lying_npy_lists(workspace: Workspace, name: str, shape: tuple[int, ...]) -> tuple[str, str]:
    """Lists whose first scan is a lying .npy."""
    return workspace.lists(name, [lying_npy(workspace, name, shape), workspace.scans[1]], workspace.masks)


def nan_scan_lists(workspace: Workspace, name: str) -> tuple[str, str]:
    """Lists whose first scan holds 3 NaN and 2 Inf voxels."""
    scan = np.load(workspace.scans[0]).copy()
    scan.flat[[5, 50, 500]] = np.nan
    scan.flat[[7, 70]] = np.inf
    return workspace.lists(name, [workspace.save(f"{name}.npy", scan), workspace.scans[1]], workspace.masks)


def nan_checkpoint(workspace: Workspace) -> str:
    """The release-format fixture with one weight set to NaN."""
    checkpoint = torch.load(RELEASE_CHECKPOINT, weights_only=True)
    state = next(value for value in checkpoint.values() if isinstance(value, dict))
    key = next(key for key, value in state.items() if value.is_floating_point() and value.numel() > 1)
    state[key].view(-1)[0] = float("nan")
    path = workspace.path("nan_weight.pth")
    torch.save(checkpoint, path)
    return str(path)


def text_checkpoint(workspace: Workspace) -> str:
    path = workspace.path("stub.pth")
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 123\n")
    return str(path)


def safetensors_named_pth(workspace: Workspace) -> str:
    from safetensors.torch import save_file

    path = workspace.path("weights_safetensors.pth")
    save_file({"weight": torch.zeros(3)}, str(path))
    return str(path)


def slice_index_list(workspace: Workspace, name: str, index: int) -> str:
    """A small-lesion slices list whose first subject's file holds ``index``."""
    files = []
    for number, value in enumerate([index, 2]):
        path = workspace.path(f"{name}_{number}.txt")
        path.write_text(f"{value}\n")
        files.append(str(path))
    listing = workspace.path(f"{name}_slices.txt")
    listing.write_text("".join(f"{line}\n" for line in files))
    return str(listing)


def a_file(workspace: Workspace, name: str) -> str:
    path = workspace.path(name)
    path.write_text("a file, not a folder\n")
    return str(path)


def locked_run_folder(workspace: Workspace) -> str:
    """A run folder this (test) process holds the training lock of, as a running trainer would."""
    from spinseg.training.run_folder import lock_run_folder

    run = workspace.path("locked_run")
    run.mkdir(exist_ok=True)
    lock_run_folder(run)
    return str(run)


def mni_scan(workspace: Workspace, name: str, dtype=np.float32) -> Path:
    """A small NIfTI scan with noise (any grid: the bad-output cases stop before the forward pass)."""
    import nibabel

    path = workspace.path(f"{name}.nii.gz")
    data = np.random.default_rng(0).normal(50, 5, (12, 14, 10)).astype(dtype)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    return path


def lying_nifti(workspace: Workspace, name: str) -> str:
    """A 155-byte-ish .nii.gz whose header claims 1000 x 1000 x 400 float32 voxels (1.5 GiB)."""
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((1000, 1000, 400))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path = workspace.path(f"{name}.nii.gz")
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + bytes(4) + bytes(16))
    return str(path)


USERS_OWN_MASK = b"the user's own mask"


def existing_output(workspace: Workspace) -> list[str]:
    """A scan whose mask output already exists in the output folder (a file predict did not write)."""
    scan = mni_scan(workspace, "sub-exists_T1w")
    output = workspace.path("pred_exists")
    output.mkdir(exist_ok=True)
    (output / "sub-exists_T1w_lesion_mask.nii.gz").write_bytes(USERS_OWN_MASK)
    return [str(scan)]


def output_onto_input(workspace: Workspace) -> list[str]:
    """``--input a.nii.gz a_lesion_mask.nii.gz --output <their folder>``: a's mask would replace the second input."""
    folder = workspace.path("onto_input")
    folder.mkdir(exist_ok=True)
    first = mni_scan(workspace, "onto_input/a")
    second = mni_scan(workspace, "onto_input/a_lesion_mask")
    return [str(first), str(second)]


def release_zip_with(workspace: Workspace, name: str, extra: dict[str, bytes] | None = None, corrupt: bool = False) -> Path:
    """A release zip of the small fixtures (+ ``extra`` members); ``corrupt`` damages one member's data."""
    from spinseg.models import build_model

    unet_path = workspace.path("unet_release.pth")
    if not unet_path.exists():
        unet = build_model("unet", **SMALL_UNET_CONFIG)
        torch.save({**unet.release_state_dicts(), "train_step": 1}, unet_path)
    zip_path = workspace.path(f"{name}.zip")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(RELEASE_CHECKPOINT, "spin/spin_atlas_traintest.pth")
        archive.write(unet_path, "u-net/unet_atlas_traintest.pth")
        for member, data in (extra or {}).items():
            archive.writestr(member, data)
    if corrupt:
        data = bytearray(zip_path.read_bytes())
        middle = len(data) // 3
        data[middle : middle + 64] = bytes(64)
        zip_path.write_bytes(bytes(data))
    return zip_path


def code_running_pickle() -> bytes:
    """A pickle that would call os.system when loaded without weights_only (it is never loaded so)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    return pickle.dumps({"weights": Payload()})


def users_own_file(workspace: Workspace) -> Path:
    """An installed folder where the user keeps their own README and a fine-tuned model, and has
    edited the release's SPiN file (so the release would replace it)."""
    output = workspace.path("models_user")
    (output / "spin").mkdir(parents=True, exist_ok=True)
    (output / "README.md").write_text("my notes\n")
    (output / "spin" / "my_finetuned.pth").write_bytes(b"mine")
    (output / "spin" / "spin_atlas_traintest.pth").write_bytes(b"my edited copy")
    return output


# ---------------------------------------------------------------------------------------------
# Builders of the "wrong words" cases of the third round: configs named by their file, slices by their count.


def config_file(workspace: Workspace, name: str, change: dict, run_folder_model: str | None = None) -> str:
    """The small SPiN config with ``change`` as ``<name>.json``; with ``run_folder_model`` written as a
    run folder's ``config.json`` (``<name>/checkpoints/config.json``) of that model."""
    config = {**json.loads(Path(SMALL_SPIN_CONFIG).read_text())["config"], **change}
    if run_folder_model:
        path = workspace.path(f"{name}/checkpoints/config.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model_name": run_folder_model, "n_chunk": 5, "model_config": SMALL_UNET_CONFIG}))
    else:
        path = workspace.path(f"{name}.json")
        path.write_text(json.dumps(config))
    return str(path)


def recorded_config_checkpoint(workspace: Workspace, change: dict) -> str:
    """One of our SPiN checkpoints whose recorded model_config has ``change``."""
    path = our_spin_checkpoint(workspace)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_config"].update(change)
    bad = workspace.path("ours_recorded_typo.pth")
    torch.save(checkpoint, bad)
    return str(bad)


def width_free_spin_config(workspace: Workspace) -> str:
    """The small SPiN config without input_channels: the slices (--n_chunk) set the input width, as the paper's does."""
    config = {key: value for key, value in json.loads(Path(SMALL_SPIN_CONFIG).read_text())["config"].items() if key != "input_channels"}
    path = workspace.path("spin_small_any_width.json")
    path.write_text(json.dumps(config))
    return str(path)


def unet_five_slices(workspace: Workspace) -> str:
    """A bare state dict of a small U-Net trained on 5 stacked slices (the U-Net recipe uses 1)."""
    from spinseg.models import build_model

    path = workspace.path("unet_5_slices.pth")
    torch.save(build_model("unet", input_channels=5, **SMALL_UNET_CONFIG).state_dict(), path)
    return str(path)


def release_predict(workspace: Workspace, name: str, *extra: str) -> list[str]:
    """predict of the release-format SPiN fixture on a small scan, no --model_config unless ``extra`` gives one."""
    return ["-m", "spinseg.predict", "--checkpoint", str(RELEASE_CHECKPOINT), "--input", str(mni_scan(workspace, f"{name}_scan")),
            "--output", str(workspace.path(f"pred_{name}")), "--device", "cpu", *extra]


def damaged_record_checkpoint(workspace: Workspace, name: str, change: dict) -> str:
    """One of our SPiN checkpoints with top-level entries changed (None: removed)."""
    checkpoint = torch.load(our_spin_checkpoint(workspace), weights_only=True)
    for key, value in change.items():
        if value is None:
            checkpoint.pop(key)
        else:
            checkpoint[key] = value
    path = workspace.path(f"{name}.pth")
    torch.save(checkpoint, path)
    return str(path)


def run_folder_with_checkpoint(workspace: Workspace) -> str:
    """A run folder (checkpoints/best.pth inside), as a user might give it where a checkpoint file is meant."""
    import shutil

    run = workspace.path("a_run_folder")
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(our_spin_checkpoint(workspace), run / "checkpoints" / "best.pth")
    return str(run)


def release_zip_alone(workspace: Workspace) -> str:
    """The authors' release zip (a zip of .pth files), given where one checkpoint is meant."""
    path = workspace.path("release_as_checkpoint.zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(RELEASE_CHECKPOINT, "spin/spin_atlas_traintest.pth")
    return str(path)

STRING_VOLUME = np.full(SHAPE, "abc")
COMPLEX_VOLUME = np.zeros(SHAPE, np.complex64)
OBJECT_VOLUME = np.empty(SHAPE[:1], dtype=object)

CASES = [
    Case("train_object_dtype", "scan .npy holding Python objects (a pickle)",
         lambda w: w.train("object", *bad_scan_list(w, "object", OBJECT_VOLUME)), ("object.npy", "not a readable .npy array")),
    Case("train_string_dtype", "scan .npy of strings",
         lambda w: w.train("string", *bad_scan_list(w, "string", STRING_VOLUME)), ("string.npy", "numeric", "<U3"), tested=False),
    Case("train_complex_dtype", "scan .npy of complex numbers",
         lambda w: w.train("complex", *bad_scan_list(w, "complex", COMPLEX_VOLUME)), ("complex.npy", "complex64")),
    Case("train_wrong_ndim", "2-D scan .npy",
         lambda w: w.train("flat", *bad_scan_list(w, "flat", np.zeros(SHAPE[:2], np.float32))), ("flat.npy", "3-D", "(24, 28)")),
    Case("train_missing_file", "path list naming a missing file",
         lambda w: w.train("missing", *w.lists("missing", [w.scans[0], str(w.path("nowhere.npy"))], w.masks)),
         ("missing_scans.txt", "line 2", "nowhere.npy", "does not exist")),
    Case("train_empty_list", "empty path list",
         lambda w: w.train("empty", *w.lists("empty", [], [])), ("empty_scans.txt", "empty")),
    Case("train_list_lengths", "scan and mask lists of different lengths",
         lambda w: w.train("lengths", *w.lists("lengths", w.scans, w.masks[:1])), ("lengths_masks.txt", "1 entries", "2")),
    Case("train_shape_mismatch", "mask shape differs from its scan (second pair)",
         lambda w: w.train("shape", *shape_mismatch_lists(w, "shape", second=True)), ("shape_mask.npy", "(24, 28, 9)", "(24, 28, 10)")),
    Case("train_unknown_model", "unknown model name",
         lambda w: w.train("model", None, None, "--model_name", "resnet"), ("resnet", "spin")),
    Case("train_other_architecture", "--restore_path: a checkpoint of another architecture (U-Net state dict)",
         lambda w: w.train("arch", None, None, "--restore_path", bare_unet_state_dict(w)),
         ("unet_state_dict.pth", "does not fit model 'spin'", "those of a 'unet' network")),
    Case("train_checkpoint_folder_blocked", "--checkpoint_path whose checkpoints/ is a file (unwritable even for root)",
         lambda w: w.train("blocked", None, None, "--checkpoint_path", str(blocked_checkpoint_folder(w))),
         ("blocked/checkpoints", "cannot create the checkpoint folder")),
    Case("train_negative_learning_rate", "negative learning rate",
         lambda w: w.train("lr", None, None, "--learning_rates", "-0.001", "--learning_schedule", "10"), ("--learning_rates", "-0.001")),
    Case("train_zero_n_chunk", "n_chunk < 1",
         lambda w: w.train("chunk0", None, None, "--n_chunk", "0"), ("--n_chunk", "0")),
    Case("train_zero_batch", "batch size 0",
         lambda w: w.train("batch", None, None, "--n_batch", "0"), ("--n_batch", "0")),
    Case("train_schedule_lengths", "learning-rate and schedule lists of different lengths",
         lambda w: w.train("schedule", None, None, "--learning_rates", "1e-3", "5e-4", "--learning_schedule", "10"),
         ("--learning_rates", "--learning_schedule", "same number")),
    Case("evaluate_complex_dtype", "evaluate: scan .npy of complex numbers",
         lambda w: w.evaluate("complex", *bad_scan_list(w, "eval_complex", COMPLEX_VOLUME)), ("eval_complex.npy", "complex64")),
    Case("evaluate_missing_file", "evaluate: path list naming a missing file",
         lambda w: w.evaluate("missing", *w.lists("eval_missing", [w.scans[0], str(w.path("gone.npy"))], w.masks)),
         ("eval_missing_scans.txt", "gone.npy")),
    Case("evaluate_empty_list", "evaluate: empty path list",
         lambda w: w.evaluate("empty", *w.lists("eval_empty", [], [])), ("eval_empty_scans.txt", "empty"), tested=False),
    Case("evaluate_shape_mismatch", "evaluate: mask shape differs from its scan",
         lambda w: w.evaluate("shape", *shape_mismatch_lists(w, "eval_shape", second=False)), ("eval_shape_mask.npy", "(24, 28, 9)")),
    Case("evaluate_unknown_model", "evaluate: unknown model name",
         lambda w: w.evaluate("model", None, None, "--model_name", "resnet"), ("resnet",), tested=False),
    Case("score_different_grids", "score: a prediction on another grid (shape) than its ground truth",
         lambda w: w.score("grid", *mask_folders(w, "grid", np.zeros(SHAPE[:2] + (SHAPE[2] + 1,), np.uint8))),
         ("grid_pred/a.nii.gz", "(24, 28, 11)", "(24, 28, 10)", "grid_gt/a.nii.gz")),
    Case("score_different_affines", "score: same shape, different voxel size (affine) than the ground truth",
         lambda w: w.score("affine", *mask_folders(w, "affine", np.zeros(SHAPE, np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]))),
         ("affine_pred/a.nii.gz", "affine differs", "affine_gt/a.nii.gz"), tested=False),
    Case("score_not_nifti", "score: a text file named .nii.gz",
         lambda w: w.score("text", *mask_folders(w, "text", "not an image")), ("text_pred/a.nii.gz", "not a readable NIfTI")),
    Case("score_nan_mask", "score: NaN in a mask",
         lambda w: w.score("nan", *mask_folders(w, "nan", nan_mask())), ("nan_pred/a.nii.gz", "1 voxels are NaN")),
    Case("score_empty_folder", "score: an empty prediction folder",
         lambda w: w.score("empty", *mask_folders(w, "empty", None)), ("empty_pred", "--pred", "no .nii or .nii.gz files")),
    Case("score_label_map", "score: a label map (values 0, 1, 2) without --label",
         lambda w: w.score("labels", *mask_folders(w, "labels", np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(np.uint8) % 3)),
         ("labels_pred/a.nii.gz", "label map", "--label N"), tested=False),
    Case("evaluate_model_conflict", "evaluate: --model unet with a checkpoint of SPiN",
         lambda w: w.evaluate("conflict", None, None, "--restore_path", our_spin_checkpoint(w), "--model", "unet"),
         ("ours_spin.pth", "checkpoint of model 'spin'", "--model 'unet'")),
    Case("evaluate_n_chunk_conflict", "evaluate: --n_chunk other than the checkpoint's",
         lambda w: w.evaluate("chunk", None, None, "--restore_path", our_spin_checkpoint(w), "--n_chunk", "3"),
         ("ours_spin.pth", "5 stacked slices", "--n_chunk 3"), tested=False),
    Case("train_unknown_recipe", "--recipe that is not named",
         lambda w: w.train("recipe", None, None, "--recipe", "vnet"), ("--recipe", "vnet", "spin_synthetic_cpu")),
    Case("train_missing_statistics", "--recipe spin_glas whose statistics.json is missing",
         lambda w: w.train("statistics", None, None, "--recipe", "spin_glas", "--dataset_statistics", str(w.path("none.json"))),
         ("none.json", "not found", "spin_glas")),
    Case("evaluate_other_architecture", "evaluate: release checkpoint of another configuration (paper-size SPiN expected)",
         lambda w: w.evaluate("arch", None, None, "--model_config", ""),
         ("spin_small_original_format.pth", "shape", "!=")),
    Case("evaluate_keras_other_model", "evaluate: Keras weights of another model (CLCI-Net's given as X-Net)",
         lambda w: w.evaluate("keras_other", None, None, "--model_config", "", "--model_name", "xnet",
                              "--restore_path", keras_weights_case(w, "other_model")), ("keras_other_model.h5", "not the Keras weights of 'xnet'")),
    Case("evaluate_keras_truncated", "evaluate: truncated Keras .h5",
         lambda w: w.evaluate("keras_truncated", None, None, "--model_config", "", "--model_name", "xnet",
                              "--restore_path", keras_weights_case(w, "truncated")), ("keras_truncated.h5", "not a readable Keras weights file")),
    Case("evaluate_keras_missing_layer", "evaluate: Keras .h5 with a layer missing",
         lambda w: w.evaluate("keras_missing", None, None, "--model_config", "", "--model_name", "xnet", "--n_chunk", "1",
                              "--restore_path", keras_weights_case(w, "missing_layer")), ("keras_missing_layer.h5", "does not fit 'xnet'", "batch_normalization_3")),
    Case("evaluate_kiunet_other_width", "evaluate: the release's KiU-Net state dict with a layer of another width",
         lambda w: w.evaluate("kiunet_width", None, None, "--model_config", "", "--model_name", "kiunet",
                              "--restore_path", other_width_kiunet_state_dict(w)), ("kiunet_other_width.pth", "unet_encoder.0.conv.weight", "!=")),
    Case("compare_no_checkpoints", "compare --from_checkpoints: a folder holding no authors' checkpoint",
         lambda w: ["-m", "spinseg.compare", "--from_checkpoints", str(empty_folder(w, "no_checkpoints")),
                    "--test_scans", str(w.scans_list), "--test_ground_truths", str(w.masks_list),
                    "--output_dir", str(w.path("compare_none")), "--device", "cpu"],
         ("no_checkpoints", "no authors' checkpoint found", "x-net/xnet_atlas_traintest.h5")),
    Case("evaluate_unknown_preset", "evaluate: an unknown --preset name",
         lambda w: w.evaluate("preset", None, None, "--preset", "vnet"), ("--preset", "'vnet'", "known: spin")),
    # Budgets before work:
    Case("train_npy_header_over_limit", "scan .npy whose header claims 4000x4000x400 float32 (25 GB) in 200 bytes",
         lambda w: w.train("huge", *lying_npy_lists(w, "huge", (4000, 4000, 400))), ("huge.npy", "over the limit")),
    Case("train_npy_header_truncated", "scan .npy whose header claims more voxels than the file holds",
         lambda w: w.train("truncated", *lying_npy_lists(w, "truncated", (100, 100, 40))), ("truncated.npy", "truncated")),
    Case("train_zero_slice_volume", "scan .npy with 0 slices",
         lambda w: w.train("noslices", *bad_scan_list(w, "noslices", np.zeros(SHAPE[:2] + (0,), np.float32))),
         ("noslices.npy", "holds no voxels")),
    Case("predict_nifti_header_lying", "predict: a tiny .nii.gz whose header claims 1000x1000x400 float32",
         lambda w: w.predict("lying", [lying_nifti(w, "lying")]), ("lying.nii.gz", "lying header", "1.5 GiB")),
    Case("evaluate_negative_batch_size", "evaluate: --batch_size -3",
         lambda w: w.evaluate("batch", None, None, "--batch_size", "-3"), ("--batch_size -3", ">= 1")),
    Case("evaluate_zero_batch_size", "evaluate: --batch_size 0",
         lambda w: w.evaluate("batch0", None, None, "--batch_size", "0"), ("--batch_size 0",), tested=False),
    Case("evaluate_negative_slice_index", "evaluate: a negative small-lesion slice index",
         lambda w: w.evaluate("negslice", None, None, "--small_lesion_slices_path", slice_index_list(w, "negative", -1)),
         ("negative_slices.txt", "line 1", "slice index -1")),
    Case("evaluate_slice_index_too_large", "evaluate: a small-lesion slice index past the last slice",
         lambda w: w.evaluate("bigslice", None, None, "--small_lesion_slices_path", slice_index_list(w, "large", 99)),
         ("large_slices.txt", "slice index 99"), tested=False),
    Case("evaluate_output_is_a_file", "evaluate: --output_path is a file (found before any forward pass)",
         lambda w: w.evaluate("file", None, None, "--output_path", a_file(w, "output_file.txt")), ("output_file.txt", "is a file")),
    Case("train_negative_filter_count", "a negative filter count in --model_config",
         lambda w: w.train("filters", None, None, "--model_config", '{"n_filters_encoder_segmentation": [8, 8, -12, 12, 16]}'),
         ("--model_config", "n_filters_encoder_segmentation", "-12")),
    # Wrong words, third round: a config named by its file and key; slices said as slices.
    Case("train_model_config_unknown_key", "--model_config file with a misspelt key",
         lambda w: w.train("typo", None, None, "--model_config", config_file(w, "typo_config", {"n_filter_encoder_segmentation": [8]})),
         ("typo_config.json", "unknown key 'n_filter_encoder_segmentation'", "did you mean 'n_filters_encoder_segmentation'")),
    Case("evaluate_model_config_wrong_type", "evaluate: --model_config file with a value of the wrong type",
         lambda w: w.evaluate("type", None, None, "--model_config", config_file(w, "type_config", {"use_batch_norm": "yes"})),
         ("type_config.json", "use_batch_norm must be true or false")),
    Case("predict_run_config_of_other_model", "predict: --model_config is a U-Net run folder's config.json, the checkpoint SPiN's",
         lambda w: release_predict(w, "runconfig", "--model_config", config_file(w, "unet_run", {}, run_folder_model="unet")),
         ("unet_run/checkpoints/config.json", "a config of model 'unet', not 'spin'")),
    Case("evaluate_recorded_config_unknown_key", "evaluate: a checkpoint whose recorded model_config has an unknown key",
         lambda w: w.evaluate("recorded", None, None, "--model_config", "", "--restore_path", recorded_config_checkpoint(w, {"n_filterz": 3})),
         ("ours_recorded_typo.pth", "its recorded model_config", "unknown key 'n_filterz'")),
    Case("compare_overrides_unknown_key", "compare: --model_overrides with a key the model does not take",
         lambda w: ["-m", "spinseg.compare", "--model_overrides", '{"unet": {"n_filters": [4]}}', "--output_dir", str(w.path("compare_overrides"))],
         ("--model_overrides unet", "unknown key 'n_filters' for model 'unet'")),
    Case("predict_n_chunk_authors_checkpoint", "predict: --n_chunk 3 with an authors' SPiN checkpoint trained on 5 slices (records none)",
         lambda w: release_predict(w, "chunk3", "--model_config", width_free_spin_config(w), "--n_chunk", "3"),
         ("spin_small_original_format.pth", "trained on 5 stacked slices, not --n_chunk 3")),
    Case("evaluate_n_chunk_authors_checkpoint", "evaluate: --n_chunk 3 with an authors' SPiN checkpoint trained on 5 slices",
         lambda w: w.evaluate("chunk3", None, None, "--model_config", width_free_spin_config(w), "--n_chunk", "3"),
         ("spin_small_original_format.pth", "trained on 5 stacked slices, not --n_chunk 3"), tested=False),
    Case("predict_slices_of_recipe", "predict: a U-Net state dict trained on 5 slices, no --n_chunk (the U-Net recipe's is 1)",
         lambda w: ["-m", "spinseg.predict", "--model", "unet", "--model_config", json.dumps(SMALL_UNET_CONFIG), "--checkpoint",
                    unet_five_slices(w), "--input", str(mni_scan(w, "recipe_scan")), "--output", str(w.path("pred_recipe")), "--device", "cpu"],
         ("unet_5_slices.pth", "trained on 5 stacked slices, not the 1 of recipe unet (give --n_chunk 5)")),
    Case("predict_other_model", "predict: --model unet with an authors' SPiN checkpoint",
         lambda w: release_predict(w, "othermodel", "--model", "unet"),
         ("spin_small_original_format.pth", "does not fit model 'unet'", "those of a 'spin' network")),
    # Hostile inputs of the third round: the words fit what was given.
    Case("predict_folder_as_checkpoint", "predict: a run folder given as --checkpoint",
         lambda w: ["-m", "spinseg.predict", "--checkpoint", run_folder_with_checkpoint(w), "--input", str(mni_scan(w, "folder_ckpt_scan")),
                    "--output", str(w.path("pred_folder_ckpt")), "--device", "cpu"],
         ("a_run_folder", "is a folder, not a checkpoint file", "checkpoints/best.pth")),
    Case("train_folder_in_list", "a scans list naming a folder",
         lambda w: w.train("folder_entry", *w.lists("folder_entry", [str(w.path("good")), w.scans[1]], w.masks)),
         ("folder_entry_scans.txt", "line 1", "is a folder, not a file")),
    Case("evaluate_no_state_dict", "evaluate: one of our checkpoints without its model_state_dict",
         lambda w: w.evaluate("nostate", None, None, "--model_config", "", "--restore_path",
                              damaged_record_checkpoint(w, "ours_no_state", {"model_state_dict": None})),
         ("ours_no_state.pth", "model_state_dict is missing")),
    Case("predict_damaged_record", "predict: a checkpoint whose recorded n_chunk is not a number",
         lambda w: ["-m", "spinseg.predict", "--checkpoint", damaged_record_checkpoint(w, "ours_bad_record", {"preprocessing": {"n_chunk": "five"}}),
                    "--input", str(mni_scan(w, "record_scan")), "--output", str(w.path("pred_record")), "--device", "cpu"],
         ("ours_bad_record.pth", "its recorded n_chunk must be a whole number >= 1", "'five'")),
    Case("train_model_config_duplicate_key", "--model_config JSON naming one key twice",
         lambda w: w.train("duplicate", None, None, "--model_config", '{"n_filters_subpixel_guidance": [4, 4], "n_filters_subpixel_guidance": [8, 8]}'),
         ("--model_config", "'n_filters_subpixel_guidance' is given twice")),
    Case("predict_zip_as_checkpoint", "predict: the authors' release zip given as --checkpoint",
         lambda w: ["-m", "spinseg.predict", "--checkpoint", release_zip_alone(w), "--input", str(mni_scan(w, "zip_scan")),
                    "--output", str(w.path("pred_zip")), "--device", "cpu"],
         ("release_as_checkpoint.zip", "a zip archive of spin/spin_atlas_traintest.pth", "spinseg.download"), tested=False),
    Case("score_same_folder_twice", "score: the same folder as --pred and --gt (every score would be perfect)",
         lambda w: w.score("same", *[mask_folders(w, "same")[1]] * 2), ("same_gt/a.nii.gz", "both the prediction and the ground truth", "(and of 1 more)")),
    Case("train_input_channels_against_n_chunk", "--model_config input_channels 3 with --n_chunk 5 (was a traceback at the first step)",
         lambda w: w.train("width", None, None, "--model_config", config_file(w, "width_config", {"input_channels": 3}), "--n_chunk", "5"),
         ("width_config.json", "input_channels 3 does not fit --n_chunk 5", "leave input_channels out")),
    # Finite or refused:
    Case("train_nan_voxels", "scan .npy with NaN/Inf voxels",
         lambda w: w.train("nan", *nan_scan_lists(w, "nan")), ("nan.npy", "5 voxels are NaN or Inf")),
    Case("evaluate_nan_voxels", "evaluate: scan .npy with NaN/Inf voxels",
         lambda w: w.evaluate("nan", *nan_scan_lists(w, "eval_nan")), ("eval_nan.npy", "NaN or Inf")),
    Case("evaluate_nan_weight", "evaluate: a checkpoint with one NaN weight",
         lambda w: w.evaluate("nanweight", None, None, "--restore_path", nan_checkpoint(w)), ("nan_weight.pth", "NaN or Inf")),
    Case("predict_complex_nifti", "predict: a complex-valued NIfTI",
         lambda w: w.predict("complex", [str(mni_scan(w, "complex_scan", np.complex64))]), ("complex_scan.nii.gz", "complex")),
    Case("train_swapped_lists", "scan and ground-truth lists swapped",
         lambda w: w.train("swapped", str(w.masks_list), str(w.scans_list)), ("ground truth is not binary", "swapped")),
    # One line for every parse failure:
    Case("train_text_checkpoint", "--restore_path: a text file named .pth (e.g. a Git LFS pointer)",
         lambda w: w.train("stub", None, None, "--restore_path", text_checkpoint(w)),
         ("stub.pth", "not a readable PyTorch checkpoint", "neither a PyTorch zip nor a pickle")),
    Case("train_safetensors_named_pth", "--restore_path: a safetensors file named .pth",
         lambda w: w.train("st", None, None, "--restore_path", safetensors_named_pth(w)), ("weights_safetensors.pth", "safetensors")),
    Case("download_corrupt_member", "download: a zip with a corrupt member",
         lambda w: w.download("corrupt", release_zip_with(w, "corrupt", corrupt=True), w.path("models_corrupt")),
         ("corrupt.zip",)),
    # Never lose or clobber a user's file:
    Case("train_run_folder_locked", "a second training on a run folder another training is writing to",
         lambda w: w.train("locked", None, None, "--checkpoint_path", locked_run_folder(w)),
         ("locked_run", "in use by another training", f"pid {os.getpid()}")),
    Case("predict_output_exists", "predict: an output file exists that this run did not write",
         lambda w: w.predict("exists", existing_output(w), output=str(w.path("pred_exists"))),
         ("sub-exists_T1w_lesion_mask.nii.gz", "exists", "--overwrite")),
    Case("predict_output_is_an_input", "predict: --input a.nii.gz a_lesion_mask.nii.gz (a's output would replace the second input)",
         lambda w: w.predict("onto", output_onto_input(w), "--overwrite", output=str(w.path("onto_input"))),
         ("a_lesion_mask.nii.gz", "is one of the inputs")),
    Case("download_would_replace_users_file", "download: the output folder holds a changed copy of a release file",
         lambda w: w.download("user", release_zip_with(w, "plain"), users_own_file(w)),
         ("spin_atlas_traintest.pth", "differs", "--force")),
    Case("download_code_running_extra", "download: the zip holds an extra .pth that would run code",
         lambda w: w.download("evil", release_zip_with(w, "evil", {"spin/extra.pth": code_running_pickle()}), w.path("models_evil")),
         ("spin/extra.pth", "could run code", "nothing installed")),
]


def empty_folder(workspace: Workspace, name: str) -> Path:
    """A folder with a stray file but no checkpoint under the release's names."""
    folder = workspace.path(name)
    (folder / "x-net").mkdir(parents=True, exist_ok=True)
    (folder / "x-net" / "notes.txt").write_text("not a checkpoint\n")
    return folder


# predict: scans the registration cannot use, and a BIDS dataset without T1w.
CASES += [
    Case("predict_2d_image", "predict: 2-D NIfTI image",
         lambda w: predict(w, "flat", nifti_scan(w, "flat_scan", np.ones((32, 32))), "--register"), ("flat_scan.nii.gz", "2-D")),
    Case("predict_4d_image", "predict: 4-D NIfTI image (3 volumes)",
         lambda w: predict(w, "four_d", nifti_scan(w, "four_d_scan", np.ones((16, 16, 16, 3))), "--register"),
         ("four_d_scan.nii.gz", "4-D", "one 3-D T1")),
    Case("predict_registration_fails", "predict --register: an image that is no head (noise)",
         lambda w: predict(w, "noise", nifti_scan(w, "noise_scan", NOISE_HEAD, voxel_mm=3.0), "--register"),
         ("noise_scan.nii.gz", "registration to MNI152 failed", "correlation")),
    Case("predict_fov_misses_brain", "predict --register: a field of view of 12 slices",
         lambda w: predict(w, "slab", nifti_scan(w, "slab_scan", SLAB), "--register"),
         ("slab_scan.nii.gz", "field of view is 12 mm")),
    Case("predict_bids_without_t1w", "predict: BIDS dataset with no *_T1w scan",
         lambda w: predict(w, "bids", bids_without_t1w(w)), ("bids_no_t1w", "no sub-*/[ses-*/]anat/*_T1w")),
]


def run_cases(root: Path, cases: list[Case]) -> dict[str, tuple[list[str], subprocess.CompletedProcess]]:
    """Builds every case in ``root`` and runs them, a few at a time (they mostly wait on imports)."""
    workspace = Workspace(root)
    commands = {case.name: case.command(workspace) for case in cases}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(commands, pool.map(run_python, commands.values())))
    return {name: (commands[name], results[name]) for name in commands}


@pytest.fixture(scope="module")
def case_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    return root, run_cases(root, TESTED_CASES)


TESTED_CASES = [case for case in CASES if case.tested]


@pytest.mark.parametrize("case", TESTED_CASES, ids=[case.name for case in TESTED_CASES])
def test_bad_input_gets_one_line_and_exit_code_2(case, case_results):
    root, results = case_results
    _, result = results[case.name]
    line = assert_one_line_error(result)
    for fragment in case.expected:
        assert fragment in line, (fragment, line)
    # Nothing half-written: no run's checkpoint folder and no evaluation's output folder was created.
    assert not [path for path in root.glob("run_*") if path.is_dir()]
    assert not [path for path in root.glob("eval_*") if path.is_dir()]
    written = [path for path in root.glob("pred_*/**/*") if path.suffix in (".gz", ".png", ".tfm", ".json")]
    # The only output-named file allowed is the user's own one that predict_output_exists plants (and must keep).
    assert all(path.read_bytes() == USERS_OWN_MASK for path in written), written
    assert not [path for path in root.glob("score_*") if path.is_dir()]


# ---------------------------------------------------------------------------------------------
# The documentation table (run this file as a script).

def markdown_cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def shown_command(arguments: list[str], root: Path) -> str:
    """The command as a user would type it, with the scratch folder shown as ``$DIR``."""
    shown = ["python", *arguments]
    return " ".join(part.replace(str(root), "$DIR").replace(str(TESTS), "tests") for part in shown)


def raw_setup_cases(root: Path) -> list[tuple[str, str, int, str]]:
    """Runs ``setup/setup_dataset_atlas.py`` on hand-made raw trees with one broken subject each.

    The broken inputs are the ones ``tests/test_setup_atlas.py`` checks (that script and its reader
    belong to the data setup); two more are added: an empty subject folder and a non-binary mask.
    """
    import shutil

    import nibabel

    from conftest import BAD, BREAKERS, write_raw_atlas_tree

    def empty_folder(folder: Path) -> Path:
        for path in folder.iterdir():
            path.unlink()
        return folder

    def non_binary_mask(folder: Path) -> Path:
        path = folder / f"{BAD}_LesionSmooth_stx.nii.gz"
        mask = np.zeros((6, 7, 5), np.float32)
        mask[1:3, 1:3, 1:3] = [[[0.2, 3.0], [1.0, 255.0]], [[0.5, 1.0], [2.0, 7.0]]]
        nibabel.save(nibabel.Nifti1Image(mask, np.eye(4)), path)
        return path

    breakers = {name: breaker for name, (breaker, _) in BREAKERS.items()}
    breakers.update({"empty subject folder (no scan, no masks)": empty_folder, "non-binary mask (0.2 ... 255)": non_binary_mask})
    rows = []
    for index, (name, breaker) in enumerate(breakers.items()):
        case_root = root / f"raw{index}"
        raw = write_raw_atlas_tree(case_root)
        breaker(raw / "c0004" / BAD)
        arguments = ["setup/setup_dataset_atlas.py", "--atlas_dir", str(raw), "--output_dir", str(case_root / "spin"),
                     "--data_split_dir", str(case_root / "split"), "--lists_dir", str(case_root / "lists")]
        result = run_python(arguments, cwd=TESTS.parent)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else "(no message: converted; setup binarises each mask as value > 0)"
        message = message.replace(str(case_root), "$DIR")
        command = " ".join(["python", *arguments]).replace(str(case_root), "$DIR")
        rows.append((f"raw ATLAS: {name}", command, result.returncode, message))
        shutil.rmtree(case_root, ignore_errors=True)
    return rows


def write_doc(output: Path) -> None:
    """Runs every case (and the raw-NIfTI setup cases) and writes the table of messages to ``output``."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name, (arguments, result) in run_cases(root, CASES).items():
            case = next(case for case in CASES if case.name == name)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            message = (lines[-1] if lines else "").replace(str(root), "$DIR").replace(str(TESTS), "tests")
            rows.append((case.problem, shown_command(arguments, root), result.returncode, message))
        if (TESTS.parent / "setup" / "setup_dataset_atlas.py").is_file():
            rows += raw_setup_cases(root / "raw")
    lines = [
        "# Bad input and the messages it gets",
        "",
        "Each row was produced by running the command: `python tests/test_bad_inputs.py docs/bad_inputs.md`",
        "regenerates this file (`tests/test_bad_inputs.py` checks the `spinseg.train`/`evaluate`/`predict`/`download`/`score` rows,",
        "`tests/test_setup_atlas.py` the raw-ATLAS ones). `$DIR` stands for the scratch folder the inputs were",
        "written to. Each message is one line on stderr, with exit code 2, and the check comes before anything",
        "is written.",
        "",
        "| Bad input | Command | Exit | Message |",
        "|---|---|---|---|",
    ]
    lines += [f"| {markdown_cell(problem)} | `{markdown_cell(command)}` | {code} | `{markdown_cell(message)}` |"
              for problem, command, code, message in rows]
    lines += [
        "",
        "Notes:",
        "",
        "1. Flags taking numbers parse `-0.001` but not `-1e-3` (argparse reads that as a flag and prints its",
        "   usage); write `--learning_rates=-1e-3`.",
        "2. A checkpoint that would run code when unpickled is refused by every command",
        "   (`tests/test_safety.py`), e.g. `error: $DIR/evil.pth: refused: it holds more than weights (it would call",
        "   posix.system); loading it could run code, and spinseg only loads weights (torch.load weights_only=True)`.",
    ]
    output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_doc(Path(sys.argv[1] if len(sys.argv) > 1 else TESTS.parent / "docs" / "bad_inputs.md"))
