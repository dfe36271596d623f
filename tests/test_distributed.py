"""Two-process DDP training on the CPU (gloo): the trainer runs under torchrun and ranks stay in step."""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import SMALL_SPIN_CONFIG, run_python, subprocess_environment, write_volume_set

TESTS = Path(__file__).parent
N_STEPS = 4


def free_port() -> int:
    """A TCP port free right now on localhost (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(arguments: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node=2 ...`` on localhost, one thread per rank."""
    environment = subprocess_environment(OMP_NUM_THREADS="1")
    for _ in range(2):  # the free port may be taken by another process between probe and use: retry once
        command = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", *arguments]
        completed = run_python(command, timeout=timeout, environment=environment)
        if completed.returncode == 0 or "address already in use" not in completed.stderr.lower():
            break
    return completed


@pytest.fixture(scope="module")
def volume_lists(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp_volumes")
    return write_volume_set(directory, n_subjects=8, shape=(32, 36, 12))


@pytest.fixture(scope="module")
def rank_weights(volume_lists, tmp_path_factory):
    """Runs tests/ddp_rank_weights.py on 2 ranks; returns its output folder."""
    output = tmp_path_factory.mktemp("ddp_ranks")
    scans, masks = volume_lists
    completed = torchrun([str(TESTS / "ddp_rank_weights.py"), "--scans", str(scans), "--masks", str(masks),
                          "--model_config", SMALL_SPIN_CONFIG, "--n_batch", "4", "--max_steps", str(N_STEPS),
                          "--output_dir", str(output)])
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output


def test_trainer_runs_under_torchrun_with_two_cpu_processes(volume_lists, rank_weights, tmp_path):
    scans, masks = volume_lists
    completed = torchrun([
        "-m", "spinseg.train",
        "--train_multimodal_scan_paths", str(scans), "--train_ground_truth_path", str(masks),
        "--model_name", "spin", "--model_config", SMALL_SPIN_CONFIG,
        "--n_batch", "4", "--max_steps", str(N_STEPS), "--n_workers", "0", "--device", "cpu",
        "--checkpoint_path", str(tmp_path / "run"),
    ])
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "2 process(es)" in completed.stdout
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / f"model-{N_STEPS:08d}.pth", map_location="cpu", weights_only=True)
    # The trainer saves rank 0 only; the helper runs the trainer's own build and epochs and saves
    # every rank, so rank 0's weights must match what the trainer saved.
    helper_rank0 = torch.load(rank_weights / "rank0.pt", weights_only=True)
    saved = checkpoint["model_state_dict"]
    parameters = [name for name in helper_rank0 if "running_" not in name and "num_batches" not in name]
    for name in parameters:
        torch.testing.assert_close(saved[name], helper_rank0[name], atol=1e-6, rtol=1e-5, msg=f"{name} differs")


def test_both_ranks_hold_identical_weights_after_ddp_steps(rank_weights):
    gathered = torch.load(rank_weights / "gathered.pt", weights_only=True)
    assert gathered.shape[0] == 2
    assert torch.equal(gathered[0], gathered[1]), f"max rank difference {(gathered[0] - gathered[1]).abs().max()}"
    rank0 = torch.load(rank_weights / "rank0.pt", weights_only=True)
    rank1 = torch.load(rank_weights / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        if "running_" in name:
            continue  # each rank's last forward updated its own batch-norm statistics (DDP re-broadcasts next forward)
        assert torch.equal(rank0[name], rank1[name]), name
    # The steps did train: the weights moved away from the (seeded, identical) initial ones.
    initial = torch.load(rank_weights / "initial.pt", weights_only=True)
    assert not torch.equal(initial, gathered[0])
