"""What CUDA (and torchrun) need that a CPU run never shows: device strings, precision settings,
RNG states per GPU, optimizer state on the parameters' device, SyncBatchNorm, and ranks that stop
together when one of them fails.

Every function here takes the facts it decides on (CUDA available, device count, capability) as
arguments or reads them through ``torch.cuda`` at call time, so CPU tests can stand in for a GPU.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist

from spinseg.errors import UserInputError, warn

CUDA_NAMES = ("cuda", "gpu")


def is_cuda_request(name: str) -> bool:
    """Whether a ``--device`` value asks for a GPU: ``cuda``, ``gpu``, ``cuda:N`` or ``gpu:N``."""
    return name.split(":", 1)[0] in CUDA_NAMES


def parse_device(name: str, local_rank: int = 0, world_size: int = 1, cuda_available: bool | None = None) -> torch.device:
    """``--device`` value -> torch.device.

    ``auto`` is CUDA when available, else the CPU; ``gpu`` means ``cuda`` (the release's name).
    Under torchrun (``world_size > 1``) each rank takes the GPU of its ``LOCAL_RANK`` whatever
    index was written, since one index for every rank would put them all on one GPU.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    name = name.strip().lower()
    if name in ("auto", ""):
        name = "cuda" if cuda_available else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not is_cuda_request(name):
        raise UserInputError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    _, _, index_text = name.partition(":")
    if index_text and not index_text.isdigit():
        raise UserInputError(f"--device {name!r}: the GPU index must be a whole number (cuda:0, cuda:1, ...)")
    if not cuda_available:
        raise UserInputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if world_size > 1:
        if index_text and int(index_text) != local_rank:
            warn(f"--device {name} under torchrun: each process uses the GPU of its LOCAL_RANK (cuda:{local_rank})")
        return torch.device("cuda", local_rank)
    return torch.device("cuda", int(index_text) if index_text else local_rank)


def gpu_has_native_bf16(capability: tuple[int, int]) -> bool:
    """bf16 tensor cores exist from compute capability 8.0 (Ampere); V100 (7.0) and T4 (7.5)
    only emulate bf16, which ``torch.cuda.is_bf16_supported()`` counts as support."""
    return tuple(capability) >= (8, 0)


def configure_cuda_math(device: torch.device, allow_tf32: bool = False, deterministic: bool = False) -> bool:
    """Sets TF32 and the cuDNN autotuner for a run on ``device``; returns whether TF32 is on.

    fp32 means fp32 here unless ``allow_tf32``: TF32 convolutions (PyTorch's default on Ampere
    and newer) change outputs by ~1e-3, so plain and optimised paths would no longer agree and
    ``--deterministic`` runs would not be exact. ``cudnn.benchmark`` picks the fastest
    convolution algorithm per shape, except for deterministic runs (its choice can vary).
    """
    if allow_tf32 and deterministic:
        warn("--allow_tf32 is ignored with --deterministic (TF32 rounds differently from fp32)")
    use_tf32 = allow_tf32 and not deterministic
    torch.backends.cuda.matmul.allow_tf32 = use_tf32
    torch.backends.cudnn.allow_tf32 = use_tf32
    if device.type == "cuda" and not deterministic:
        torch.backends.cudnn.benchmark = True
    return use_tf32


def cuda_rng_states() -> list[torch.Tensor] | None:
    """Every visible GPU's RNG state, or None when this process has not initialised CUDA
    (so a ``--device cpu`` run on a GPU machine never opens a CUDA context to save them)."""
    if not torch.cuda.is_initialized():
        return None
    return torch.cuda.get_rng_state_all()


def restore_cuda_rng_states(states: list[torch.Tensor]) -> int:
    """Restores the saved states of the first min(saved, visible) GPUs; returns how many.

    A checkpoint saved by torchrun's rank 0 holds one state per GPU it saw, and the resumed run
    may see fewer (``CUDA_VISIBLE_DEVICES=0``); GPUs beyond the saved ones keep their seed.
    """
    if not states or not torch.cuda.is_available():
        return 0
    count = min(len(states), torch.cuda.device_count())
    for index in range(count):
        torch.cuda.set_rng_state(states[index], index)
    return count


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """Loads ``state_dict`` and puts every state tensor on its parameter's device and dtype.

    Call after the model is on its training device: Adam's moments loaded while the model was
    still on the CPU would stay there and mix with CUDA gradients at the first step. Scalar
    ``step`` counters stay as loaded (Adam keeps them on the CPU unless fused/capturable).
    """
    optimizer.load_state_dict(state_dict)
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                dtype = parameter.dtype if value.is_floating_point() else value.dtype
                state[key] = value.to(device=parameter.device, dtype=dtype)


def should_sync_batch_norm(device_type: str, world_size: int) -> bool:
    """SyncBatchNorm when several CUDA processes each see part of the batch (n_batch / N samples);
    it needs CUDA, so a multi-process CPU run keeps per-process statistics (with a warning)."""
    return device_type == "cuda" and world_size > 1


def prepare_distributed_batch_norm(model: torch.nn.Module, device: torch.device, world_size: int, per_process_batch: int) -> torch.nn.Module:
    """The model with batch norm synchronised across processes where :func:`should_sync_batch_norm`."""
    has_batch_norm = any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())
    if world_size <= 1 or not has_batch_norm:
        return model
    if should_sync_batch_norm(device.type, world_size):
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    warn(f"{world_size} processes on {device.type}: batch norm statistics come from each process's "
         f"{per_process_batch} samples, not the whole batch (SyncBatchNorm needs CUDA)")
    return model


def run_on_all_ranks(enabled: bool, device: torch.device, action: Callable[[], object] | None = None) -> None:
    """Runs ``action`` (rank-local work: a save, a validation, a loss check), then, under torchrun,
    tells every rank whether any rank failed, so that all stop together.

    Replaces a plain barrier: a rank that raised would otherwise leave the others waiting in the
    barrier until the NCCL timeout. The rank that failed re-raises its own error; the others raise
    a short one pointing at it.
    """
    error: BaseException | None = None
    try:
        if action is not None:
            action()
    except Exception as caught:  # noqa: BLE001 - re-raised below, after the other ranks know
        error = caught
    if enabled:
        flag = torch.tensor([0.0 if error is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if error is None and flag.item() > 0:
            raise RuntimeError(f"stopping rank {dist.get_rank()}: another process failed (its error is in its log)")
    if error is not None:
        raise error


class DeviceLossTracker:
    """The training loss kept on its device between reads: the latest value, and a running sum
    that turns non-finite if any step's loss was (one host sync per read instead of per step)."""

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None
        self.total: torch.Tensor | None = None

    def add(self, loss: torch.Tensor) -> None:
        """Records one step's scalar loss (detached), without waiting for the device."""
        loss = loss.detach().float()
        self.last = loss
        self.total = loss if self.total is None else self.total + loss

    def read(self) -> tuple[float, bool]:
        """(latest loss, whether every loss since the last read was finite); one host sync."""
        if self.last is None:
            return float("nan"), True
        last, total = torch.stack([self.last, self.total]).tolist()
        self.total = None
        return last, math.isfinite(total)


def read_loss_on_all_ranks(tracker: DeviceLossTracker, step: int, enabled: bool, device: torch.device) -> float:
    """The latest loss; raises on every rank together when any rank's loss was NaN or infinite."""
    last, finite = tracker.read()

    def check() -> None:
        if not finite:
            raise RuntimeError(f"training diverged at step {step} or the steps before it: loss {last}")

    run_on_all_ranks(enabled, device, check)
    return last
