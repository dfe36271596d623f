"""Run under torchrun by tests/test_distributed.py: the trainer's DDP steps, then every rank saves its weights.

``spinseg.training.trainer.train`` saves on rank 0 only and returns no model, so this script runs the
trainer's own parts (``build_run``, then ``train_epoch`` until ``--max_steps``) and, instead of the
final checkpoint, writes ``rank<r>.pt`` (the model's state dict) per rank and ``gathered.pt`` on
rank 0 (every rank's flattened weights, collected with ``all_gather``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from spinseg.recipes.config import TrainConfig
from spinseg.runtime.distributed import shutdown_distributed
from spinseg.training.trainer import build_run, train_epoch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", required=True)
    parser.add_argument("--masks", required=True)
    parser.add_argument("--model_config", required=True)
    parser.add_argument("--n_batch", type=int, default=4)
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    output = Path(args.output_dir)

    config = TrainConfig(train_multimodal_scan_paths=args.scans, train_ground_truth_path=args.masks, model_name="spin",
                         model_config=args.model_config, n_batch=args.n_batch, max_steps=args.max_steps, device="cpu",
                         n_workers=0, checkpoint_path=str(output / "run"))
    run = build_run(config)
    assert run.context.world_size > 1, "run under torchrun with --nproc_per_node >= 2"
    if run.context.is_main:
        torch.save(torch.cat([p.detach().reshape(-1) for p in run.model.parameters()]).clone(), output / "initial.pt")
    run.model.train()
    progress = tqdm(disable=True)
    while run.step < run.total_steps:
        train_epoch(run, progress)

    torch.save(run.model.state_dict(), output / f"rank{run.context.rank}.pt")
    # Parameters only: DDP broadcasts rank 0's batch-norm statistics at the start of each forward,
    # but the last forward then updates every rank's own copy from its own batch, so after the
    # final step those buffers differ by design (the trainer saves rank 0's).
    flat = torch.cat([parameter.detach().reshape(-1) for parameter in run.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(run.context.world_size)]
    dist.all_gather(gathered, flat)
    if run.context.is_main:
        torch.save(torch.stack(gathered), output / "gathered.pt")
        run.writer.close()
    dist.barrier()
    del run  # as the trainer's return drops the DDP wrapper and loader: then leave the group cleanly
    shutdown_distributed()


if __name__ == "__main__":
    main()
