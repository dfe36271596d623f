"""The training loop behind ``python -m spinseg.train`` (single process or torchrun/DDP)."""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from ..checkpoint import read_checkpoint, save_checkpoint, model_from_checkpoint
from ..config import TrainConfig, schedule_value, validate_train_config
from ..data.slices import SliceTrainingDataset
from ..data.transforms import AugmentationConfig, Normalization
from ..data.volumes import check_same_shape, load_volume, read_paired_lists
from ..errors import UserInputError, fail
from ..fileio import write_json
from ..inference import predict_volume
from ..metrics import mean_over_subjects, release_metrics
from ..models import build_model
from .runtime import DistributedContext, init_distributed, rng_state, seed_everything, select_device, set_rng_state

CHECKPOINT_PATTERN = "model-{step:08d}.pth"


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle per epoch, one shard per rank) that can skip the
    first ``skip`` indices of its shard, so a resumed run continues mid-epoch where it stopped."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def parse_model_config(text: str) -> dict:
    """``--model_config``: a JSON object, or the path of a JSON file holding one."""
    if not text:
        return {}
    path = Path(text)
    try:
        source = path.read_text() if path.suffix == ".json" or path.is_file() else text
        config = json.loads(source)
    except (OSError, json.JSONDecodeError) as error:
        raise UserInputError(f"--model_config {text[:80]!r}: not a JSON object or JSON file ({error})") from None
    if not isinstance(config, dict):
        raise UserInputError(f"--model_config {text[:80]!r}: expected a JSON object")
    # A release-style config file (as in tests/fixtures) nests the constructor arguments under "config".
    return config.get("config", config) if set(config) <= {"config", "n_parameters", "input_shape", "output_shapes"} else config


def model_input_config(model_name: str, n_chunk: int, n_channels_per_slice: int, model_config: dict) -> dict:
    """Adds the input width (n_chunk slices x channels) to a model config unless it sets one."""
    if "input_channels" in model_config or "input_channels_segmentation" in model_config:
        return model_config
    return {**model_config, "input_channels": n_chunk * n_channels_per_slice}


def list_checkpoints(directory: Path) -> list[Path]:
    """Training checkpoints in ``directory``, oldest step first."""
    return sorted(directory.glob("model-*.pth"))


def check_writable(directory: Path, bytes_needed: int) -> None:
    """Fails before training when the checkpoint folder cannot hold another checkpoint."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write_test"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as error:
        raise fail(directory, f"checkpoint folder is not writable ({error.strerror or error})") from None
    free = shutil.disk_usage(directory).free
    if free < 2 * bytes_needed:
        raise fail(directory, f"only {free / 2**20:.0f} MiB free, a checkpoint needs about {bytes_needed / 2**20:.0f} MiB")


def validate(model, scan_paths, ground_truth_paths, config: TrainConfig, normalization, device) -> dict:
    """Per-subject 3-D release metrics on whole validation volumes, averaged over subjects."""
    records = []
    for scan_path, ground_truth_path in zip(scan_paths, ground_truth_paths):
        scan, mask = load_volume(scan_path), load_volume(ground_truth_path)
        check_same_shape(scan, scan_path, mask, ground_truth_path)
        probabilities = predict_volume(model, scan, config.n_chunk, normalization, config.val_batch_size, device, amp=config.amp)
        records.append(release_metrics(np.asarray(mask) > 0, probabilities > 0.5))
    return mean_over_subjects(records)


def image_grid(images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, count: int = 4) -> torch.Tensor:
    """(B, C, H, W) inputs, targets and logits -> (n, 3, H, 3W) rows of scan | ground truth | prediction."""
    centre = images[:count, images.shape[1] // 2 : images.shape[1] // 2 + 1].float()
    low = centre.amin(dim=(2, 3), keepdim=True)
    high = centre.amax(dim=(2, 3), keepdim=True)
    scan = (centre - low) / (high - low + 1e-6)
    rows = torch.cat([scan, targets[:count].float(), torch.sigmoid(logits[:count].float())], dim=-1)
    return rows.repeat(1, 3, 1, 1).clamp(0, 1)


def train(config: TrainConfig) -> dict:
    """Trains ``config.model_name`` and returns a summary (steps, final loss, best validation metrics).

    Writes checkpoints (atomically) and tensorboard logs under ``config.checkpoint_path``.
    """
    validate_train_config(config)
    context: DistributedContext = init_distributed(config.device)
    device = select_device(config.device, context.local_rank)
    if config.n_thread > 0:
        torch.set_num_threads(config.n_thread)
    seed_everything(config.seed, config.deterministic)

    scan_paths, ground_truth_paths = read_paired_lists(config.train_multimodal_scan_paths, config.train_ground_truth_path)
    validation_lists = None
    if config.val_multimodal_scan_paths:
        validation_lists = read_paired_lists(config.val_multimodal_scan_paths, config.val_ground_truth_path)
    first_scan = load_volume(scan_paths[0])
    normalization = Normalization(config.dataset_normalization, config.dataset_means, config.dataset_stddevs)

    checkpoint_dir = Path(config.checkpoint_path)
    model_config = model_input_config(config.model_name, config.n_chunk, 1, parse_model_config(config.model_config))
    model = build_model(config.model_name, **model_config)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rates[0], weight_decay=config.w_weight_decay
    )
    step, best = 0, {"dice": -1.0, "step": 0}

    restore = config.restore_path
    if config.resume and not restore:
        existing = list_checkpoints(checkpoint_dir / "checkpoints")
        restore = str(existing[-1]) if existing else ""
    if restore:
        checkpoint = read_checkpoint(restore)
        loaded = model_from_checkpoint(checkpoint, restore, config.model_name, **model_config)
        model.load_state_dict(loaded.state_dict())
        if "optimizer_state_dict" in checkpoint:
            optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        train_state = checkpoint.get("train_state", {})
        step = int(train_state.get("step", checkpoint.get("train_step", 0)))
        best = train_state.get("best", best)
        if "rng_state" in checkpoint:
            set_rng_state(checkpoint["rng_state"])

    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if context.is_main:
        check_writable(checkpoint_dir / "checkpoints", 3 * parameter_bytes)
    train_model = model
    if context.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward_model = torch.compile(train_model) if config.compile else train_model

    if config.n_batch % context.world_size:
        raise UserInputError(f"--n_batch {config.n_batch} must be divisible by the {context.world_size} processes")
    per_process_batch = config.n_batch // context.world_size
    dataset = SliceTrainingDataset(
        scan_paths,
        ground_truth_paths,
        n_chunk=config.n_chunk,
        normalization=normalization,
        augmentation=AugmentationConfig(
            tuple(config.augmentation_flip_type),
            config.augmentation_rotate,
            config.augmentation_noise_type,
            config.augmentation_noise_spread,
            tuple(config.augmentation_resize_and_pad),
        ),
        crop_shape=config.crop_shape or None,
        seed=config.seed,
    )
    sampler = ResumableDistributedSampler(dataset, context.world_size, context.rank, config.seed)
    loader = DataLoader(
        dataset,
        batch_size=per_process_batch,
        sampler=sampler,
        num_workers=config.n_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    steps_per_epoch = math.ceil(sampler.num_samples / per_process_batch)
    n_epochs = config.learning_schedule[-1]
    total_steps = n_epochs * steps_per_epoch
    if config.max_steps > 0:
        total_steps = min(total_steps, config.max_steps)
    pos_weight = torch.tensor([config.w_positive_class], device=device)

    writer = None
    if context.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(checkpoint_dir / "tensorboard"), purge_step=step + 1 if step else None)
        write_json(checkpoint_dir / "config.json", {**asdict(config), "model_config": model_config})
        print(
            f"training {config.model_name} ({sum(p.numel() for p in model.parameters()):,} parameters) on {device}, "
            f"{len(dataset)} volumes of shape {first_scan.shape}, {steps_per_epoch} steps per epoch, "
            f"{total_steps} steps, effective batch {config.n_batch} ({context.world_size} process(es))",
            flush=True,
        )

    def save(current_step: int, loss_value: float) -> None:
        save_checkpoint(
            checkpoint_dir / "checkpoints" / CHECKPOINT_PATTERN.format(step=current_step),
            model,
            optimizer_state_dict=optimizer.state_dict(),
            train_state={"step": current_step, "epoch": current_step // steps_per_epoch, "best": best, "loss": loss_value},
            rng_state=rng_state(),
            train_config=asdict(config),
        )

    def run_validation(current_step: int) -> None:
        nonlocal best
        if validation_lists is None or not context.is_main:
            return
        metrics = validate(model, *validation_lists, config, normalization, device)
        model.train()
        for name, value in metrics.items():
            writer.add_scalar(f"validation/{name}", value, current_step)
        improved = metrics["dice"] > best["dice"]
        if improved:
            best = {**metrics, "step": current_step}
            save_checkpoint(checkpoint_dir / "best.pth", model, train_state={"step": current_step, "best": best})
        print(
            f"step {current_step}: validation " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            + ("  (best so far)" if improved else f"  (best {best['dice']:.4f} at step {best['step']})"),
            flush=True,
        )

    from tqdm import tqdm

    progress = tqdm(total=total_steps, initial=step, disable=not context.is_main, desc="train", dynamic_ncols=True)
    model.train()
    loss_value, start_time, start_step = float("nan"), time.time(), step
    while step < total_steps:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        sampler.skip = (step - epoch * steps_per_epoch) * per_process_batch
        dataset.set_epoch(epoch)
        dataset.augmentation_probability = schedule_value(config.augmentation_probabilities, config.augmentation_schedule, epoch)
        dataset.positive_class_sample_rate = schedule_value(
            config.positive_class_sample_rates, config.positive_class_sample_schedule, epoch
        )
        learning_rate = schedule_value(config.learning_rates, config.learning_schedule, epoch)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                logits = forward_model(images)
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise RuntimeError(f"training diverged at step {step}: loss {loss_value}")
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{learning_rate:.1e}", epoch=epoch)
            if context.is_main and (step % config.n_summary == 0 or step == 1):
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/learning_rate", learning_rate, step)
                writer.add_scalar("train/augmentation_probability", dataset.augmentation_probability, step)
                writer.add_images("train/scan_groundtruth_prediction", image_grid(images, targets, logits.detach()), step)
            if context.is_main and step % config.n_checkpoint == 0 and step < total_steps:
                save(step, loss_value)
            if config.n_validation and step % config.n_validation == 0 and step < total_steps:
                run_validation(step)
            if context.enabled:
                dist.barrier()
            if step >= total_steps:
                break
    progress.close()

    if context.is_main:
        save(step, loss_value)
        run_validation(step)
        writer.flush()
        writer.close()
    if context.enabled:
        dist.barrier()
    seconds = time.time() - start_time
    summary = {
        "steps": step,
        "final_loss": loss_value,
        "best": best,
        "seconds": seconds,
        "steps_per_second": (step - start_step) / max(seconds, 1e-9),
        "checkpoint": str(checkpoint_dir / "checkpoints" / CHECKPOINT_PATTERN.format(step=step)),
    }
    if context.is_main:
        print(f"done: {step} steps in {seconds:.0f} s, last loss {loss_value:.4f}; checkpoints in {checkpoint_dir}", flush=True)
    return summary
