"""Safe loading (weights only, code-carrying pickles refused), .safetensors export, and checkpoint
writes that never damage the previous checkpoint: read-only folder, full disk, failing save."""
from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import SMALL_SPIN_CONFIG, assert_one_line_error, run_python, write_volume_set
from spinseg.models.checkpoint import export_safetensors, load_model, read_checkpoint, save_checkpoint
from spinseg.recipes.config import TrainConfig
from spinseg.training.trainer import train
from spinseg.errors import UserInputError
from spinseg.models import build_model

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SMALL_CONFIG = json.loads((FIXTURES / "spin_small_config.json").read_text())["config"]


class TouchOnUnpickle:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: the stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class SystemOnUnpickle:
    """Unpickling this runs a shell command through ``os.system``."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(path: pathlib.Path, payload) -> pathlib.Path:
    """A file in our checkpoint layout whose weights hide ``payload``."""
    torch.save({"format": "spinseg-checkpoint-v1", "model_name": "spin", "model_config": SMALL_CONFIG,
                "model_state_dict": {"weight": payload}}, path)
    return path


def small_spin(seed: int = 0) -> torch.nn.Module:
    """The small SPiN with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = build_model("spin", **SMALL_CONFIG)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_the_release_checkpoint_loads_with_weights_only(monkeypatch):
    loads = []
    original_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return original_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    model = load_model(FIXTURES / "spin_small_original_format.pth", "spin", **SMALL_CONFIG)
    assert loads == [True]
    io = np.load(FIXTURES / "spin_small_io.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(io["input"]))
    torch.testing.assert_close(logits, torch.from_numpy(io["logits"]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("payload_class", [TouchOnUnpickle, SystemOnUnpickle])
def test_a_code_carrying_pickle_is_refused_and_never_runs(tmp_path, payload_class):
    # The crafted file does run code when loaded unsafely (so the test below means something).
    proof_marker = tmp_path / "proof"
    torch.load(malicious_checkpoint(tmp_path / "proof.pth", payload_class(proof_marker)), weights_only=False)
    assert proof_marker.exists()

    marker = tmp_path / "marker"
    path = malicious_checkpoint(tmp_path / "evil.pth", payload_class(marker))
    with pytest.raises(UserInputError) as caught:
        load_model(path, "spin")
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "refused" in message
    assert ("posix.system" in message) if payload_class is SystemOnUnpickle else ("getattr" in message)
    assert not marker.exists()


def test_the_commands_refuse_a_code_carrying_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    path = malicious_checkpoint(tmp_path / "evil.pth", SystemOnUnpickle(marker))
    scans, masks = write_volume_set(tmp_path / "data", 2, shape=(24, 28, 10), seed=1)
    commands = [
        ["-m", "spinseg.train", "--train_multimodal_scan_paths", str(scans), "--train_ground_truth_path", str(masks),
         "--model_config", SMALL_SPIN_CONFIG, "--restore_path", str(path), "--n_workers", "0", "--device", "cpu",
         "--checkpoint_path", str(tmp_path / "run")],
        ["-m", "spinseg.evaluate", "--multimodal_scan_paths", str(scans), "--ground_truth_path", str(masks),
         "--restore_path", str(path), "--device", "cpu", "--output_path", str(tmp_path / "eval")],
        ["-m", "spinseg.export", "--checkpoint", str(path), "--output", str(tmp_path / "evil.safetensors")],
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:  # three start-ups at once: they mostly wait on imports
        results = list(pool.map(run_python, commands))
    for result in results:
        line = assert_one_line_error(result)
        assert str(path) in line and "refused" in line
    assert not marker.exists()
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()
    assert not (tmp_path / "evil.safetensors").exists()


def test_safetensors_export_round_trip_gives_the_same_outputs(tmp_path):
    model = small_spin(seed=2)
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, model, train_state={"step": 7})
    output = tmp_path / "model.safetensors"
    result = run_python(["-m", "spinseg.export", "--checkpoint", str(checkpoint), "--export", "safetensors", "--output", str(output)])
    assert result.returncode == 0, result.stderr
    assert output.is_file()

    from safetensors import safe_open

    with safe_open(str(output), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["model_name"] == "spin" and json.loads(metadata["model_config"])["input_channels"] == 5

    from_pth, from_safetensors = load_model(checkpoint, "spin"), load_model(output, "spin")
    inputs = torch.randn(2, 5, 45, 53, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, found, original = from_pth(inputs), from_safetensors(inputs), model(inputs)
    assert torch.equal(expected, found) and torch.equal(expected, original)
    for key, value in from_pth.state_dict().items():
        assert torch.equal(value, from_safetensors.state_dict()[key]), key


def test_export_refuses_a_release_checkpoint(tmp_path):
    with pytest.raises(UserInputError, match="only spinseg checkpoints"):
        export_safetensors(FIXTURES / "spin_small_original_format.pth", tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Checkpoint folder problems: training stops before the previous checkpoint is touched.

def tiny_config(tmp_path, **overrides) -> TrainConfig:
    """A 2-step CPU run on two tiny volumes that checkpoints every step."""
    scans, masks = write_volume_set(tmp_path / "data", 2, shape=(24, 28, 10), seed=1)
    settings = dict(
        train_multimodal_scan_paths=str(scans), train_ground_truth_path=str(masks), model_config=SMALL_SPIN_CONFIG,
        n_batch=2, learning_rates=[1e-3], learning_schedule=[10], augmentation_probabilities=[0.5],
        augmentation_schedule=[10], n_summary=100, n_checkpoint=1, n_validation=0, max_steps=1, n_workers=0,
        device="cpu", seed=1, checkpoint_path=str(tmp_path / "run"),
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory):
    """One trained folder (data + run with the checkpoint of step 1), copied by each test that needs it."""
    root = tmp_path_factory.mktemp("trained")
    train(tiny_config(root))
    return root


@pytest.fixture
def trained_once(trained_template, tmp_path):
    """This test's copy of the run folder, its config, the step-1 checkpoint and that file's bytes."""
    shutil.copytree(trained_template, tmp_path, dirs_exist_ok=True)
    config = tiny_config(tmp_path)
    path = tmp_path / "run" / "checkpoints" / "model-00000001.pth"
    return config, path, path.read_bytes()


def assert_folder_unchanged(path: pathlib.Path, original: bytes) -> None:
    """The previous checkpoint is byte-identical, and no new or temporary checkpoint appeared."""
    assert path.read_bytes() == original
    assert sorted(item.name for item in path.parent.iterdir()) == [path.name]


def test_read_only_checkpoint_folder_stops_before_training(trained_once, monkeypatch):
    config, path, original = trained_once
    folder = path.parent
    folder.chmod(0o555)
    try:
        if os.geteuid() == 0:
            # root writes through permission bits, so emulate what a normal user meets: os.access says no.
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda target, mode, **kw: False if pathlib.Path(target) == folder else real_access(target, mode, **kw))
        config.resume, config.max_steps = True, 3
        with pytest.raises(UserInputError) as caught:
            train(config)
    finally:
        folder.chmod(0o755)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(folder)) and "not writable" in message
    assert_folder_unchanged(path, original)


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_low_disk_space_stops_before_training(trained_once, monkeypatch):
    config, path, original = trained_once
    monkeypatch.setattr(shutil, "disk_usage", lambda target: DiskUsage(10**9, 10**9 - 4096, 4096))
    config.resume, config.max_steps = True, 3
    with pytest.raises(UserInputError, match="MiB free") as caught:
        train(config)
    assert str(path.parent) in str(caught.value) and "\n" not in str(caught.value)
    assert_folder_unchanged(path, original)


def test_disk_filling_up_during_training_stops_at_the_next_save(trained_once, monkeypatch):
    config, path, original = trained_once
    calls = []

    def shrinking_disk(target):
        calls.append(target)  # the start-up check sees room, the first save does not
        return DiskUsage(10**9, 0, 10**9) if len(calls) == 1 else DiskUsage(10**9, 10**9, 0)

    monkeypatch.setattr(shutil, "disk_usage", shrinking_disk)
    config.resume, config.max_steps = True, 3
    with pytest.raises(UserInputError, match="MiB free"):
        train(config)
    assert len(calls) == 2
    assert_folder_unchanged(path, original)


def test_a_failing_save_leaves_the_previous_checkpoint_intact(trained_once, monkeypatch):
    config, path, original = trained_once

    def full_disk_save(obj, target, *args, **kwargs):
        pathlib.Path(target).write_bytes(b"half a checkpoint")  # something was written before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk_save)
    config.resume, config.max_steps = True, 3
    with pytest.raises(UserInputError) as caught:
        train(config)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path.parent}:") and "no space left" in message
    assert_folder_unchanged(path, original)


def test_a_failing_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    model = small_spin()
    target = tmp_path / "best.pth"
    save_checkpoint(target, model, train_state={"step": 1})
    original = target.read_bytes()

    def writer_error(obj, destination, *args, **kwargs):
        pathlib.Path(destination).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0; PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", writer_error)
    with pytest.raises(UserInputError, match="could not write best.pth") as caught:
        save_checkpoint(target, model, train_state={"step": 2})
    assert "previous file is unchanged" in str(caught.value)
    assert target.read_bytes() == original and [item.name for item in tmp_path.iterdir()] == ["best.pth"]
    assert read_checkpoint(target)["train_state"]["step"] == 1
