"""Run under torchrun (gloo) by tests/test_gpu_readiness.py: one rank fails in rank-local work.

``--failing_rank r`` makes rank r raise inside ``run_on_all_ranks``; every rank must then stop
promptly (the others with "another process failed") instead of waiting in a barrier.
``--failing_rank -1``: nobody fails, every rank prints "ok".
"""
from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from spinseg.runtime.devices import DeviceLossTracker, read_loss_on_all_ranks, run_on_all_ranks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--failing_rank", type=int, default=-1)
    parser.add_argument("--nan", action="store_true", help="the failing rank's loss is NaN instead of a failed save")
    arguments = parser.parse_args()
    dist.init_process_group("gloo")
    rank, device = dist.get_rank(), torch.device("cpu")
    try:
        if arguments.nan:
            tracker = DeviceLossTracker()
            tracker.add(torch.tensor(float("nan") if rank == arguments.failing_rank else 0.5))
            read_loss_on_all_ranks(tracker, 7, True, device)
        else:
            def save() -> None:
                if rank == arguments.failing_rank:
                    raise OSError("disk full (simulated)")

            run_on_all_ranks(True, device, save)
        dist.barrier()  # where the trainer would wait next
        print(f"rank {rank}: ok", flush=True)
    except Exception as error:  # noqa: BLE001 - reported for the test to read
        print(f"rank {rank}: stopped: {error}", flush=True)
        raise SystemExit(3)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
