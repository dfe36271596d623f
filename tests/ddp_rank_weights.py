"""Run under torchrun by tests/test_distributed.py: the trainer's DDP steps, then every rank saves its weights.

``spinseg.training.trainer.train`` saves on rank 0 only and returns no model, so this script rebuilds
what it builds (same helpers, same seed, model, optimizer, dataset, sampler and loop body) and,
after ``--max_steps`` steps, writes ``rank<r>.pt`` (the model's state dict) per rank and
``gathered.pt`` on rank 0 (every rank's flattened weights, collected with ``all_gather``).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from spinseg.recipes.config import TrainConfig, schedule_value
from spinseg.data.slices import SliceTrainingDataset
from spinseg.data.transforms import AugmentationConfig, Normalization
from spinseg.data.volumes import read_paired_lists
from spinseg.training.runtime import init_distributed, seed_everything, select_device, shutdown_distributed
from spinseg.training.trainer import ResumableDistributedSampler
from spinseg.models.model_config import model_input_config, parse_model_config
from spinseg.acceleration.training import prepare_training_model
from spinseg.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", required=True)
    parser.add_argument("--masks", required=True)
    parser.add_argument("--model_config", required=True)
    parser.add_argument("--n_batch", type=int, default=4)
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()

    config = TrainConfig(n_batch=args.n_batch, max_steps=args.max_steps, device="cpu", n_workers=0)
    context = init_distributed(config.device)
    assert context.world_size > 1, "run under torchrun with --nproc_per_node >= 2"
    device = select_device(config.device, context.local_rank)
    seed_everything(config.seed, config.deterministic)

    scan_paths, ground_truth_paths = read_paired_lists(args.scans, args.masks)
    normalization = Normalization(config.dataset_normalization, config.dataset_means, config.dataset_stddevs)
    model_config = model_input_config("spin", config.n_chunk, 1, parse_model_config(args.model_config))
    model = build_model("spin", **model_config).to(device)
    prepare_training_model(model, device, channels_last=config.channels_last)  # as the trainer does
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rates[0],
                                 weight_decay=config.w_weight_decay)
    train_model = torch.nn.parallel.DistributedDataParallel(model)

    per_process_batch = config.n_batch // context.world_size
    dataset = SliceTrainingDataset(
        scan_paths, ground_truth_paths, n_chunk=config.n_chunk, normalization=normalization,
        augmentation=AugmentationConfig(tuple(config.augmentation_flip_type), config.augmentation_rotate,
                                        config.augmentation_noise_type, config.augmentation_noise_spread,
                                        tuple(config.augmentation_resize_and_pad)),
        crop_shape=None, seed=config.seed,
    )
    sampler = ResumableDistributedSampler(dataset, context.world_size, context.rank, config.seed)
    loader = DataLoader(dataset, batch_size=per_process_batch, sampler=sampler, num_workers=0)
    steps_per_epoch = math.ceil(sampler.num_samples / per_process_batch)
    pos_weight = torch.tensor([config.w_positive_class], device=device)
    output = Path(args.output_dir)
    if context.is_main:
        torch.save(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone(), output / "initial.pt")
    model.train()
    step = 0
    while step < args.max_steps:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        dataset.augmentation_probability = schedule_value(config.augmentation_probabilities, config.augmentation_schedule, epoch)
        dataset.positive_class_sample_rate = schedule_value(config.positive_class_sample_rates, config.positive_class_sample_schedule, epoch)
        for group in optimizer.param_groups:
            group["lr"] = schedule_value(config.learning_rates, config.learning_schedule, epoch)
        for images, targets in loader:
            images = images.to(device)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = train_model(images)
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets.to(device), pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= args.max_steps:
                break

    torch.save(model.state_dict(), output / f"rank{context.rank}.pt")
    # Parameters only: DDP broadcasts rank 0's batch-norm statistics at the start of each forward,
    # but the last forward then updates every rank's own copy from its own batch, so after the
    # final step those buffers differ by design (the trainer saves rank 0's).
    flat = torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(context.world_size)]
    dist.all_gather(gathered, flat)
    if context.is_main:
        torch.save(torch.stack(gathered), output / "gathered.pt")
    dist.barrier()
    del train_model, loader  # as the trainer's return drops them: then leave the group cleanly
    shutdown_distributed()


if __name__ == "__main__":
    main()
