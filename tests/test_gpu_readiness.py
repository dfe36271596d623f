"""CUDA-only faults shown on the CPU (issue 17): a faked ``torch.cuda``, float64 or ``meta``
stand-ins for a second device, and gloo standing in for NCCL."""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import spinseg.runtime.devices as devices
import spinseg.runtime.distributed as runtime
from spinseg.errors import UserInputError
from spinseg.experiments.memory import LiveTensorBytes, recipe_memory
from spinseg.recipes.config import TrainConfig
from spinseg.training.epoch_loader import EpochSettingsDataset, EpochSettingsSampler
from conftest import SMALL_SPIN_CONFIG, write_volume_set


# ---- device strings ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, local_rank, world_size, expected", [
    ("cuda:1", 0, 1, "cuda:1"), ("gpu:2", 0, 1, "cuda:2"), ("cuda", 0, 1, "cuda:0"), ("auto", 3, 1, "cuda:3"),
    ("cuda", 1, 2, "cuda:1"), ("CUDA:0", 1, 2, "cuda:1"), ("cpu", 1, 2, "cpu"),
])
def test_cuda_device_strings_with_a_gpu(name, local_rank, world_size, expected):
    assert devices.parse_device(name, local_rank, world_size, cuda_available=True) == torch.device(expected)


def test_device_strings_without_a_gpu():
    assert devices.parse_device("auto", cuda_available=False) == torch.device("cpu")
    for bad in ("cuda:0", "gpu", "tpu", "cuda:x"):
        with pytest.raises(UserInputError, match="--device"):
            devices.parse_device(bad, cuda_available=bad == "cuda:x")
    assert devices.is_cuda_request("cuda:3") and devices.is_cuda_request("gpu") and not devices.is_cuda_request("cpu")


def test_torchrun_with_cuda_n_joins_nccl_on_the_local_rank_gpu(monkeypatch):
    """``--device cuda:0`` under torchrun used to pick gloo and leave every rank on one GPU."""
    chosen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: chosen.setdefault("gpu", index))
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda backend: chosen.setdefault("backend", backend))
    context = runtime.init_distributed("cuda:0")
    assert chosen == {"gpu": 1, "backend": "nccl"}
    assert runtime.select_device("cuda:0", context.local_rank) == torch.device("cuda", 1)


# ---- bf16, TF32, cuDNN --------------------------------------------------------------------------

@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_native_bf16_needs_compute_capability_8(monkeypatch, capability, native):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert runtime.native_bf16(torch.device("cuda", 0)) is native


def test_tf32_is_off_unless_allowed_and_never_when_deterministic(monkeypatch, capsys):
    for name in ("allow_tf32",):
        monkeypatch.setattr(torch.backends.cudnn, name, True)
        monkeypatch.setattr(torch.backends.cuda.matmul, name, True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert devices.configure_cuda_math(torch.device("cpu")) is False
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.benchmark  # CPU: the autotuner is not switched on
    assert devices.configure_cuda_math(torch.device("cuda", 0), allow_tf32=True) is True
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    assert devices.configure_cuda_math(torch.device("cuda", 0), allow_tf32=True, deterministic=True) is False
    assert not torch.backends.cudnn.benchmark and "ignored with --deterministic" in capsys.readouterr().err


# ---- RNG states -----------------------------------------------------------------------------------

def test_rng_states_restored_for_the_visible_gpus_only(monkeypatch):
    """A checkpoint from rank 0 of a 4-GPU torchrun, resumed with CUDA_VISIBLE_DEVICES=0."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("would index GPUs 1-3"))
    state = runtime.rng_state()
    state["cuda"] = [torch.tensor([10 + index], dtype=torch.uint8) for index in range(4)]
    runtime.set_rng_state(state)
    assert restored == [(10, 0)]


def test_saving_rng_states_opens_no_cuda_context_on_a_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine ...
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # ... where this run never used CUDA
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("opened a CUDA context"))
    assert "cuda" not in runtime.rng_state()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(3, dtype=torch.uint8)])
    assert len(runtime.rng_state()["cuda"]) == 1


# ---- optimizer state after a resume ---------------------------------------------------------------

def adam_state_after_one_step() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 2, 6, 6)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def assert_state_follows_parameters(optimizer: torch.optim.Optimizer) -> None:
    assert optimizer.state, "no optimizer state was loaded"
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                assert (value.device, value.dtype) == (parameter.device, parameter.dtype), key


def test_load_optimizer_state_moves_moments_to_the_parameters_device_and_dtype():
    """float64 and ``meta`` parameters stand in for CUDA ones."""
    for move in (lambda module: module.double(), lambda module: module.to("meta")):
        model = move(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        devices.load_optimizer_state(optimizer, adam_state_after_one_step())
        assert_state_follows_parameters(optimizer)


def test_trainer_loads_adam_state_after_moving_the_model(tmp_path, monkeypatch):
    """Resume where the trainer's device move also turns the model into float64 (a stand-in for
    CUDA): the saved Adam moments must come out float64, i.e. loaded after the move."""
    import spinseg.training.trainer as trainer

    scans, masks = write_volume_set(tmp_path / "data", 2, shape=(24, 28, 10), seed=1)
    config = TrainConfig(train_multimodal_scan_paths=str(scans), train_ground_truth_path=str(masks),
                         model_config=SMALL_SPIN_CONFIG, n_batch=2, n_checkpoint=2, n_validation=0, n_summary=1,
                         max_steps=2, checkpoint_path=str(tmp_path / "run"), n_workers=0, device="cpu",
                         crop_shape=[16, 16])
    trainer.train(config)
    original = trainer.prepare_training_model
    monkeypatch.setattr(trainer, "prepare_training_model", lambda model, *args, **kwargs: original(model.double(), *args, **kwargs))
    config.resume = True  # max_steps reached: no step runs, the final save writes the loaded state back
    trainer.train(config)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "model-00000002.pth", weights_only=True)
    moments = [value for state in saved["optimizer_state_dict"]["state"].values() for key, value in state.items()
               if key in ("exp_avg", "exp_avg_sq")]
    assert moments and all(value.dtype == torch.float64 for value in moments)


# ---- batch norm across processes ------------------------------------------------------------------

def test_sync_batch_norm_only_for_several_cuda_processes(capsys):
    assert devices.should_sync_batch_norm("cuda", 2) and devices.should_sync_batch_norm("cuda", 8)
    assert not devices.should_sync_batch_norm("cuda", 1) and not devices.should_sync_batch_norm("cpu", 4)

    def model():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.BatchNorm2d(4)))

    plain = model()
    keys = set(plain.state_dict())
    parameters = list(plain.parameters())
    synced = devices.prepare_distributed_batch_norm(plain, torch.device("cuda", 0), world_size=4, per_process_batch=2)
    kinds = [type(module) for module in synced.modules() if "BatchNorm" in type(module).__name__]
    assert kinds == [torch.nn.SyncBatchNorm] * 2
    assert set(synced.state_dict()) == keys  # checkpoints keep their keys
    assert all(a is b for a, b in zip(parameters, synced.parameters()))  # the optimizer still holds them
    single = model()
    assert devices.prepare_distributed_batch_norm(single, torch.device("cuda", 0), 1, 8) is single
    cpu = model()
    assert devices.prepare_distributed_batch_norm(cpu, torch.device("cpu"), 2, 4) is cpu
    assert "each process's 4 samples" in capsys.readouterr().err
    assert not any(isinstance(module, torch.nn.SyncBatchNorm) for module in cpu.modules())


# ---- loss read at intervals -----------------------------------------------------------------------

def test_loss_tracker_reports_the_latest_loss_and_any_nan_since_the_last_read():
    tracker = devices.DeviceLossTracker()
    for value in (0.5, 0.25):
        tracker.add(torch.tensor(value))
    assert tracker.read() == (0.25, True)
    tracker.add(torch.tensor(float("nan")))
    tracker.add(torch.tensor(0.125))
    assert tracker.read() == (0.125, False)
    tracker.add(torch.tensor(0.125))
    assert tracker.read() == (0.125, True)  # the NaN belonged to the previous interval
    tracker.add(torch.tensor(float("inf")))
    with pytest.raises(RuntimeError, match="diverged at step 9"):
        devices.read_loss_on_all_ranks(tracker, 9, False, torch.device("cpu"))


# ---- persistent data-loader workers -----------------------------------------------------------------

class SettingsEcho(Dataset):
    """Returns the per-epoch settings it sees (in the worker process)."""

    def __init__(self):
        self.epoch, self.augmentation_probability, self.positive_class_sample_rate = 0, 0.0, 1.0

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.tensor([index, self.epoch, self.augmentation_probability, self.positive_class_sample_rate])


def test_persistent_workers_see_each_epochs_settings():
    dataset = SettingsEcho()
    loader = DataLoader(EpochSettingsDataset(dataset), batch_size=4, sampler=EpochSettingsSampler(range(4), dataset),
                        num_workers=1, persistent_workers=True)
    seen = []
    for epoch in range(3):
        dataset.epoch, dataset.augmentation_probability, dataset.positive_class_sample_rate = epoch, epoch / 4, 1 - epoch / 8
        (batch,) = list(loader)
        seen.append(batch)
    worker_pids = {loader._iterator._workers[0].pid}
    assert len(worker_pids) == 1 and loader._iterator is not None  # one worker served every epoch
    for epoch, batch in enumerate(seen):
        assert batch[:, 0].tolist() == [0, 1, 2, 3]
        assert batch[:, 1:].tolist() == [[epoch, epoch / 4, 1 - epoch / 8]] * 4


# ---- ranks stop together -------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [[], ["--nan"]], ids=["failed-save", "nan-loss"])
def test_a_rank_local_error_stops_every_rank_promptly(flags):
    from test_distributed import torchrun

    start = time.time()
    completed = torchrun([str(__import__("pathlib").Path(__file__).parent / "ddp_rank_failure.py"), "--failing_rank", "0", *flags],
                         timeout=90)
    assert completed.returncode != 0
    assert "rank 1: stopped: stopping rank 1: another process failed" in completed.stdout, completed.stdout + completed.stderr[-2000:]
    assert "rank 1: ok" not in completed.stdout and time.time() - start < 90


def test_ranks_without_errors_pass_the_check():
    from test_distributed import torchrun

    completed = torchrun([str(__import__("pathlib").Path(__file__).parent / "ddp_rank_failure.py")], timeout=90)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "rank 0: ok" in completed.stdout and "rank 1: ok" in completed.stdout


# ---- memory on the meta device --------------------------------------------------------------------

def test_live_tensor_bytes_counts_by_hand():
    with LiveTensorBytes() as tracker:
        first = torch.zeros(1024, device="meta")  # 4 KiB
        view = first.view(32, 32)  # same storage: not counted again
        second = first * 2  # 8 KiB live
        del first, view, second
        third = torch.zeros(256, dtype=torch.float64, device="meta")  # 2 KiB: all others freed
    assert tracker.peak == 8192
    assert tracker.current == 2048
    del third


def test_kiunet_recipe_fits_a_24_gb_gpu():
    row = recipe_memory("kiunet")
    assert row.train_input[2:] == (128, 128)
    # 20% headroom for cuDNN workspaces, the CUDA context and fragmentation.
    assert row.train_gib * 1.2 < 24 * 1e9 / 2**30 and row.inference_gib * 1.2 < 24 * 1e9 / 2**30
    assert not math.isnan(row.train_gib) and row.train_gib > 1


def test_benchmark_records_tf32_and_passes_the_choice_to_phase_processes(monkeypatch):
    """The fresh phase processes (``--isolate``) follow the parent's TF32 choice."""
    import spinseg.experiments.benchmark as benchmark

    sent = {}

    class Completed:
        stdout, stderr, returncode = benchmark.PHASE_RESULT_PREFIX + "{}", "", 0

    def fake_run(command, **kwargs):
        sent.update(__import__("json").loads(command[-1]))
        return Completed()

    monkeypatch.setattr(benchmark.subprocess, "run", fake_run)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    benchmark.run_phase({"kind": "data", "device": "cpu"}, isolate=True)
    assert sent["allow_tf32"] is True
    parser_help = __import__("spinseg.cli.benchmark", fromlist=["build_parser"]).build_parser().format_help()
    assert "--allow_tf32" in parser_help and "--memory_estimate" in parser_help
