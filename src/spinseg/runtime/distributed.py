"""Device choice, seeding, determinism and distributed (torchrun) set-up."""
from __future__ import annotations

import gc
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from spinseg.runtime.devices import (
    cuda_rng_states,
    gpu_has_native_bf16,
    is_cuda_request,
    parse_device,
    restore_cuda_rng_states,
)


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local_rank> when available, else cpu; "gpu" is accepted for "cuda" (release name);
    "cuda:N" picks GPU N (under torchrun each rank takes its LOCAL_RANK's GPU, see parse_device)."""
    return parse_device(name, local_rank, int(os.environ.get("WORLD_SIZE", "1")))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 convolutions and matrix products in hardware, hence faster than fp32.

    A CUDA GPU with bf16 support, or a CPU with AVX512-BF16 or AMX (oneDNN emulates bf16 on other
    x86 CPUs, which is slower than fp32).
    """
    if device.type == "cuda":
        # is_bf16_supported() also says yes where bf16 is only emulated (V100, T4).
        return gpu_has_native_bf16(torch.cuda.get_device_capability(device))
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.backends.mkldnn.is_available() and any(check() for check in checks if check is not None)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds python, numpy and torch; with ``deterministic`` also forces deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matrix products on a GPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    """Python, numpy and torch RNG states as safely loadable values (tensors, lists, numbers)."""
    numpy_state = np.random.get_state()
    state = {
        "python": [list(item) if isinstance(item, tuple) else item for item in random.getstate()],
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "torch": torch.get_rng_state(),
    }
    cuda_states = cuda_rng_states()  # None unless this process already uses CUDA
    if cuda_states is not None:
        state["cuda"] = cuda_states
    return state


def set_rng_state(state: dict) -> None:
    """Restores what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        restore_cuda_rng_states(state["cuda"])  # as many GPUs as are both saved and visible


@dataclass
class DistributedContext:
    """Where this process stands in a torchrun job (world_size 1 for a plain run)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistributedContext:
    """Joins the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device_name in ("auto", "") or is_cuda_request(device_name)) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size)


def shutdown_distributed() -> None:
    """Leaves the process group, if any, before the interpreter shuts down.

    The DistributedDataParallel wrapper sits in reference cycles, so it can outlive the training
    function; if it (and the gloo work it holds) is torn down during interpreter finalisation the
    process aborts ("terminate called without an active exception") after training succeeded.
    Collecting it first and then destroying the group makes the exit clean. Call once per process,
    after every object that wraps the model has been dropped.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ignore_interrupt_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT, so Ctrl-C (sent to the whole process group)
    interrupts only the main process, which stops them and exits 130 with one line instead of each
    worker printing a ``KeyboardInterrupt`` traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
