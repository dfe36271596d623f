"""Killed training resumes from its latest complete checkpoint and ends bit-identical to a run never stopped.

The runs are real ``python -m spinseg.train`` processes killed with SIGKILL at random moments (after
each has written at least one checkpoint), so a kill can land mid-step, mid-save or mid-validation.
"""
from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_same_tensors, subprocess_environment, write_training_data
from conftest import training_command as conftest_training_command
from spinseg.models.checkpoint import read_checkpoint
from spinseg.training.run_folder import latest_complete_checkpoint, list_checkpoints, remove_stale_temporaries

PLANNED_STEPS = 12
CHECKPOINT_EVERY = 2


def training_command(data: Path, run: Path, *extra: str) -> list[str]:
    """The shared deterministic run, :data:`PLANNED_STEPS` steps with a checkpoint every :data:`CHECKPOINT_EVERY`."""
    return conftest_training_command(data, run, *extra, max_steps=PLANNED_STEPS, checkpoint_every=CHECKPOINT_EVERY)


def run_and_kill(command: list[str], checkpoints: Path, rng: random.Random, timeout: float = 120.0) -> bool:
    """Starts ``command``, waits until it has written a new checkpoint, then SIGKILLs it after a random delay.

    Returns False when the run finished on its own before it could be killed.
    """
    before = set(list_checkpoints(checkpoints))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_environment())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if set(list_checkpoints(checkpoints)) - before:
                time.sleep(rng.uniform(0.0, 0.25))  # somewhere in the next step, save or validation
                break
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint appeared in time")
        if process.poll() is not None:
            return False
        process.send_signal(signal.SIGKILL)
        return True
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.slow
def test_resume_after_repeated_sigkill_matches_an_uninterrupted_run(tmp_path):
    data = write_training_data(tmp_path / "data")
    reference = subprocess.run(training_command(data, tmp_path / "reference"), capture_output=True, text=True,
                               env=subprocess_environment(), timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = read_checkpoint(tmp_path / "reference" / "checkpoints" / f"model-{PLANNED_STEPS:08d}.pth")

    run = tmp_path / "interrupted"
    checkpoints = run / "checkpoints"
    command = training_command(data, run, "--resume")
    rng = random.Random(7)
    kills = sum(run_and_kill(command, checkpoints, rng) for _ in range(3))
    assert kills >= 2, "the runs finished before they could be killed; the test lost its point"

    # Leftovers a crash can leave: a half-written temporary, and a newest "checkpoint" that is
    # truncated (its step is ahead, so training later overwrites it with a good one). On a very
    # busy machine the last life may have finished the run; then there is no step ahead to fake.
    latest = list_checkpoints(checkpoints)[-1]
    step = int(latest.stem.split("-")[1])
    truncated = checkpoints / f"model-{step + CHECKPOINT_EVERY:08d}.pth"
    if step < PLANNED_STEPS:
        truncated.write_bytes(latest.read_bytes()[:1000])
    leftover = checkpoints / f".model-{step + CHECKPOINT_EVERY:08d}.pth.abc123.pth"
    leftover.write_bytes(b"partial")

    final = subprocess.run(command, capture_output=True, text=True, env=subprocess_environment(), timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    warnings = [line for line in final.stderr.splitlines() if line.startswith("warning:")]
    if step < PLANNED_STEPS:
        assert len(warnings) == 1 and truncated.name in warnings[0], final.stderr[-2000:]
    else:
        assert not warnings, final.stderr[-2000:]
    assert f"resuming from {latest}" in final.stdout

    names = sorted(path.name for path in checkpoints.iterdir())
    assert names == [f"model-{s:08d}.pth" for s in range(CHECKPOINT_EVERY, PLANNED_STEPS + 1, CHECKPOINT_EVERY)]
    for path in list_checkpoints(checkpoints):
        loaded = read_checkpoint(path)
        assert loaded["train_state"]["step"] == int(path.stem.split("-")[1])
        assert {"model_state_dict", "optimizer_state_dict", "rng_state", "train_config"} <= set(loaded)
    found = read_checkpoint(checkpoints / f"model-{PLANNED_STEPS:08d}.pth")
    assert_same_tensors(expected["model_state_dict"], found["model_state_dict"], "model")
    assert_same_tensors(expected["optimizer_state_dict"], found["optimizer_state_dict"], "optimizer")
    assert found["train_state"] == expected["train_state"]
    assert_same_tensors(expected["rng_state"]["torch"], found["rng_state"]["torch"], "torch rng")


def test_latest_complete_checkpoint_skips_a_corrupt_newest_file(tmp_path, capsys):
    from spinseg.models.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 1)
    for step in (2, 4):
        save_checkpoint(tmp_path / f"model-{step:08d}.pth", model, train_state={"step": step})
    good = (tmp_path / "model-00000004.pth").read_bytes()
    (tmp_path / "model-00000006.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "model-00000008.pth").write_text("not a checkpoint")
    (tmp_path / ".model-00000010.pth.x1y2.pth").write_bytes(good)

    path, checkpoint = latest_complete_checkpoint(tmp_path)
    assert path.name == "model-00000004.pth" and checkpoint["train_state"]["step"] == 4
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: skipping") for line in warnings)
    assert "model-00000008.pth" in warnings[0] and "model-00000006.pth" in warnings[1]

    remove_stale_temporaries(tmp_path)
    assert not list(tmp_path.glob(".model-*"))
    assert latest_complete_checkpoint(tmp_path / "missing") is None
