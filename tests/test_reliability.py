"""Issue 16, round two of hostile inputs: every loader raises only ``UserInputError`` on any bytes,
path lists read with a BOM and CRLF, the run-folder lock, predict's no-overwrite rule, download
keeping the user's files, setup trusting outputs by header and size, and kills during a write
(setup and predict) leaving nothing a rerun trusts.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spinseg
from conftest import SMALL_SPIN_CONFIG, write_volume_set
from spinseg.errors import UserInputError

FIXTURES = Path(__file__).parent / "fixtures"
RELEASE_CHECKPOINT = FIXTURES / "spin_small_original_format.pth"


def subprocess_environment() -> dict:
    """Environment in which ``python -m spinseg...`` runs the same spinseg as this test process."""
    source = str(Path(spinseg.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}


# ---------------------------------------------------------------------------------------------
# Every loader, random and truncated bytes: UserInputError and nothing else.


def good_files() -> dict[str, bytes]:
    """One valid file per loader, as bytes (the seeds the fuzzer truncates and flips)."""
    buffers: dict[str, bytes] = {}
    stream = io.BytesIO()
    np.save(stream, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    buffers[".npy"] = stream.getvalue()
    image = nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), np.eye(4))
    buffers[".nii"] = image.to_bytes()
    import gzip

    buffers[".nii.gz"] = gzip.compress(buffers[".nii"])
    buffers[".pth"] = RELEASE_CHECKPOINT.read_bytes()
    from safetensors.torch import save as save_safetensors

    buffers[".safetensors"] = save_safetensors({"weight": torch.zeros(4)}, metadata={"model_name": "spin", "model_config": "{}"})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("spin/readme.txt", "x" * 200)
    buffers[".zip"] = archive.getvalue()
    buffers[".json"] = json.dumps({"n_filters_encoder_segmentation": [8, 8, 12, 12, 16]}).encode()
    buffers[".txt"] = "\ufeffa.npy\r\nb.npy\r\n".encode()
    return buffers


def run_loader(suffix: str, path: Path, scratch: Path) -> None:
    """Calls the loader of ``suffix`` on ``path`` the way the commands do."""
    if suffix == ".npy":
        from spinseg.data.volumes import load_volume

        load_volume(path, ndim=(1, 2, 3, 4))
    elif suffix in (".nii", ".nii.gz"):
        from spinseg.datasets.atlas_raw import load_nifti_volume as load_raw
        from spinseg.inference.scan import load_scan, scan_data

        try:
            scan_data(load_scan(path), path)
        finally:
            load_raw(path)
    elif suffix == ".pth":
        from spinseg.models.checkpoint import read_checkpoint

        read_checkpoint(path)
    elif suffix == ".safetensors":
        from spinseg.models.checkpoint import load_safetensors

        load_safetensors(path, "spin")
    elif suffix == ".zip":
        from spinseg.inference.pretrained import safe_extract

        target = scratch / "extracted"
        target.mkdir(exist_ok=True)
        safe_extract(path, target)
    elif suffix == ".json":
        from spinseg.models.model_config import parse_model_config

        parse_model_config(str(path))
    elif suffix == ".txt":
        from spinseg.data.volumes import read_path_list

        read_path_list(path, must_exist=False)


GOOD = good_files()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(suffix=st.sampled_from(sorted(GOOD)), mode=st.sampled_from(["truncate", "flip", "random"]),
       position=st.floats(0, 1), noise=st.binary(min_size=0, max_size=600))
def test_every_loader_raises_only_user_input_errors(tmp_path_factory, suffix, mode, position, noise):
    good = GOOD[suffix]
    cut = int(position * len(good))
    if mode == "truncate":
        data = good[:cut]
    elif mode == "flip":
        data = good[:cut] + noise[:32] + good[cut + len(noise[:32]):]
    else:
        data = noise
    scratch = tmp_path_factory.mktemp("fuzz")
    path = scratch / f"input{suffix}"
    path.write_bytes(data)
    try:
        run_loader(suffix, path, scratch)
    except UserInputError as error:
        assert "\n" not in str(error) and str(path) in str(error) or suffix in (".json", ".safetensors")
    # Anything else (IndexError, struct.error, zlib.error, MemoryError...) fails the test by escaping.


def test_the_seed_files_load():
    # The fuzzer's seeds are valid, so a truncation or flip is what breaks them.
    scratch = Path(__import__("tempfile").mkdtemp())
    for suffix in (".npy", ".nii", ".nii.gz", ".pth", ".zip", ".json", ".txt"):
        path = scratch / f"seed{suffix}"
        path.write_bytes(GOOD[suffix])
        run_loader(suffix, path, scratch)


def test_path_list_with_bom_and_crlf_names_existing_files(tmp_path):
    # Issue 16: a UTF-8 BOM gave "does not exist" for a file that exists.
    from spinseg.data.volumes import read_path_list

    volume = tmp_path / "scan.npy"
    np.save(volume, np.zeros((2, 2, 2), np.float32))
    listing = tmp_path / "list.txt"
    listing.write_bytes(f"\ufeff{volume}\r\n{volume}\r\n".encode())
    assert read_path_list(listing) == [str(volume), str(volume)]
    listing.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserInputError, match="not a UTF-8 text file"):
        read_path_list(listing)


def test_a_checkpoint_with_an_inf_weight_is_refused_when_loaded(tmp_path):
    from spinseg.models import build_model
    from spinseg.models.checkpoint import load_model, save_checkpoint

    config = json.loads(Path(SMALL_SPIN_CONFIG).read_text())["config"]
    model = build_model("spin", **config)
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = float("inf")
    save_checkpoint(tmp_path / "inf.pth", model)
    with pytest.raises(UserInputError, match=r"1 weight\(s\) are NaN or Inf"):
        load_model(tmp_path / "inf.pth", "spin")


def test_lying_nifti_is_refused_before_any_allocation(tmp_path):
    # The 155-byte file whose header claims 1.5 GiB: refused from the header, memory stays flat.
    import resource

    from spinseg.inference.scan import load_scan

    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 400))
    header.set_data_dtype(np.float32)
    path = tmp_path / "lying.nii"
    path.write_bytes(header.binaryblock + bytes(4 + 16))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserInputError, match="lying header"):
        load_scan(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: far below 1.5 GiB


# ---------------------------------------------------------------------------------------------
# The run-folder lock.


def test_a_lock_dies_with_its_holder(tmp_path):
    # flock: a trainer killed with SIGKILL leaves no stale lock behind; a live one blocks with its pid.
    from spinseg.training.run_folder import lock_run_folder, unlock_run_folder

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from spinseg.training.run_folder import lock_run_folder; "
         f"lock_run_folder(Path({str(run)!r})); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=subprocess_environment())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserInputError, match=f"in use by another training \\(pid {holder.pid} on "):
            lock_run_folder(run)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock_run_folder(run)
    unlock_run_folder(run)


# ---------------------------------------------------------------------------------------------
# Download keeps every file it did not bring.


def test_download_keeps_the_users_files_and_moves_a_replaced_one_aside_only_with_force(tmp_path, capsys):
    from spinseg.cli import download as download_cli
    from spinseg.models import build_model

    small_unet = {"n_filters_encoder_segmentation": [4, 4, 8, 8, 8], "n_filters_decoder_segmentation": [8, 8, 4, 4]}
    unet_path = tmp_path / "unet.pth"
    torch.save({**build_model("unet", **small_unet).release_state_dicts(), "train_step": 1}, unet_path)
    zip_path = tmp_path / "release.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.write(RELEASE_CHECKPOINT, "spin/spin_atlas_traintest.pth")
        archive.write(unet_path, "u-net/unet_atlas_traintest.pth")
        archive.writestr("README.md", "release readme\n")
    output = tmp_path / "models"
    (output / "spin").mkdir(parents=True)
    (output / "spin" / "my_finetuned.pth").write_bytes(b"mine")
    (output / "README.md").write_text("my notes\n")
    flags = ["--zip_path", str(zip_path), "--output_dir", str(output), "--check_config", f"spin={SMALL_SPIN_CONFIG}",
             "--check_config", f"unet={json.dumps(small_unet)}"]
    with pytest.raises(SystemExit) as exit_info:
        download_cli.main(flags)
    assert exit_info.value.code == 2 and "README.md: exists and differs" in capsys.readouterr().err
    assert not (output / "spin" / "spin_atlas_traintest.pth").exists()  # nothing installed
    assert download_cli.main([*flags, "--force"]) == 0
    printed = capsys.readouterr().out
    assert (output / "spin" / "my_finetuned.pth").read_bytes() == b"mine"
    assert (output / "spin" / "spin_atlas_traintest.pth").is_file() and (output / "README.md").read_text() == "release readme\n"
    aside = [path for path in output.iterdir() if path.name.startswith("README.md.before-download-")]
    assert len(aside) == 1 and aside[0].read_text() == "my notes\n" and aside[0].name in printed
    assert download_cli.main(flags) == 0  # everything in place already: nothing to replace, no --force needed
    assert "already installed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Setup: outputs trusted by header and size; a kill mid-write leaves nothing a rerun trusts.


def synthetic_raw(root: Path, n_subjects: int = 4) -> Path:
    from spinseg.datasets.synthetic import write_synthetic_atlas

    raw = root / "atlas"
    write_synthetic_atlas(raw, n_subjects=n_subjects, seed=1, shape=(40, 44, 36), n_folds=2, test_fraction=0.5)
    return raw


def setup_arguments(raw: Path, work: Path) -> list[str]:
    return ["--atlas_dir", str(raw), "--output_dir", str(work / "spin"), "--data_split_dir", str(raw / "data_split"),
            "--lists_dir", str(work / "lists")]


def test_setup_redoes_a_truncated_output_and_removes_a_killed_runs_temporaries(tmp_path):
    from spinseg.datasets.setup_atlas import setup_atlas

    raw = synthetic_raw(tmp_path)
    quiet = {"log": lambda _: None}
    setup_atlas(raw, tmp_path / "spin", raw / "data_split", tmp_path / "lists", **quiet)
    scans = sorted((tmp_path / "spin").rglob("*_t1w_stx.npy"))
    reference = scans[0].read_bytes()
    # What a kill leaves: a hidden half-written temporary, and (say, a disk full later) a truncated output
    # whose time is newer than every input.
    temporary = scans[0].with_name(f".{scans[0].name}.abcd1234.npy")
    temporary.write_bytes(reference[:100])
    scans[0].write_bytes(reference[: len(reference) // 2])
    result = setup_atlas(raw, tmp_path / "spin", raw / "data_split", tmp_path / "lists", **quiet)
    assert sorted(status for status in result["statuses"].values()) == ["converted"] + ["up to date"] * (len(scans) - 1)
    assert scans[0].read_bytes() == reference and not temporary.exists()


def test_setup_killed_at_random_moments_then_rerun_equals_a_clean_run(tmp_path):
    import random

    raw = synthetic_raw(tmp_path, n_subjects=6)
    clean = tmp_path / "clean"
    command = [sys.executable, str(Path(__file__).resolve().parents[1] / "setup" / "setup_dataset_atlas.py")]
    assert subprocess.run(command + setup_arguments(raw, clean), env=subprocess_environment(), capture_output=True,
                          timeout=300).returncode == 0
    killed = tmp_path / "killed"
    rng = random.Random(5)
    for _ in range(3):
        process = subprocess.Popen(command + setup_arguments(raw, killed), env=subprocess_environment(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 2.5))  # after the imports, during the conversions
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert subprocess.run(command + setup_arguments(raw, killed), env=subprocess_environment(), capture_output=True,
                          timeout=300).returncode == 0
    files = lambda root: {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(killed / "spin") == files(clean / "spin")  # no hidden temporaries, every output whole


# ---------------------------------------------------------------------------------------------
# Ctrl-C with data-loader workers; predict killed mid-write.


def test_ctrl_c_with_loader_workers_exits_130_without_a_traceback(tmp_path):
    scans, masks = write_volume_set(tmp_path / "data", 2, shape=(24, 28, 10), seed=1)
    process = subprocess.Popen(
        [sys.executable, "-m", "spinseg.train", "--train_multimodal_scan_paths", str(scans), "--train_ground_truth_path",
         str(masks), "--model_config", SMALL_SPIN_CONFIG, "--n_batch", "2", "--max_steps", "100000", "--n_workers", "2",
         "--n_checkpoint", "100000", "--device", "cpu", "--checkpoint_path", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_environment(), start_new_session=True)
    line = process.stdout.readline()  # "training spin (...)": the loader starts right after
    assert line.startswith("training"), line
    time.sleep(4)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted" in stderr


def test_predict_killed_while_writing_leaves_only_whole_scans_and_a_rerun_cleans_up(tmp_path):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        data = rng.normal(50, 5, (60, 70, 56)).astype(np.float32)
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
        affine[:3, 3] = [-90.0, -126.0, -72.0]  # about the MNI box, so no registration warning is needed
        nib.save(nib.Nifti1Image(data, affine), inputs / f"s{index}.nii.gz")
    output = tmp_path / "out"
    command = [sys.executable, "-m", "spinseg.predict", "--model", "spin", "--checkpoint", str(RELEASE_CHECKPOINT),
               "--model_config", SMALL_SPIN_CONFIG, "--input", str(inputs), "--output", str(output), "--device", "cpu",
               "--batch_size", "16"]
    process = subprocess.Popen(command, env=subprocess_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    caught = False
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if output.is_dir() and any(path.name.startswith(".") for path in output.iterdir()):
            process.send_signal(signal.SIGKILL)  # a scan's temporaries exist: it is mid-write
            caught = True
            break
        time.sleep(0.005)
    process.wait()
    # Whatever the kill hit: each scan has all of its outputs or none, and every one loads whole.
    for name in ("s0", "s1"):
        present = [path for path in output.glob(f"{name}_*") if not path.name.startswith(".")]
        assert len(present) in (0, 3), present
        for path in present:
            if path.name.endswith(".nii.gz"):
                assert np.asarray(nib.load(path).dataobj).shape == (60, 70, 56)
            elif path.suffix == ".json":
                json.loads(path.read_text())
    rerun = subprocess.run(command + ["--overwrite"], env=subprocess_environment(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not [path for path in output.iterdir() if path.name.startswith(".")]
    assert caught or process.returncode == 0
    # A third run without --overwrite refuses before any work: it would replace files it did not write now.
    refused = subprocess.run(command, env=subprocess_environment(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "Traceback" not in refused.stderr
