"""``--seed`` with ``--deterministic`` makes two CPU training runs bit-identical."""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from spinseg.models.checkpoint import read_checkpoint
from conftest import assert_same_tensors, subprocess_environment, training_command, write_training_data

STEPS = 6


@pytest.mark.slow
def test_two_seeded_deterministic_runs_are_bit_identical(tmp_path):
    data = write_training_data(tmp_path / "data")
    commands = [training_command(data, tmp_path / name, max_steps=STEPS) for name in ("first", "second")]
    # Both at once: same machine and thread settings (--n_thread 1), so concurrency cannot change the numbers.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda command: subprocess.run(
            command, capture_output=True, text=True, env=subprocess_environment(), timeout=300), commands))
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
    first, second = (read_checkpoint(tmp_path / name / "checkpoints" / f"model-{STEPS:08d}.pth") for name in ("first", "second"))
    assert_same_tensors(first["model_state_dict"], second["model_state_dict"], "model")
    assert_same_tensors(first["optimizer_state_dict"], second["optimizer_state_dict"], "optimizer")
    assert first["train_state"] == second["train_state"]


def test_seed_everything_fixes_every_generator_and_rng_state_round_trips():
    import random

    import numpy as np
    import torch

    from spinseg.runtime.distributed import rng_state, seed_everything, set_rng_state

    seed_everything(11)
    state = rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[0] == again[0] and draws[1] == again[1] and torch.equal(draws[2], again[2])
    seed_everything(11)
    assert random.random() == draws[0]
