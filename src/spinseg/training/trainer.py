"""The training loop behind ``python -m spinseg.train`` (single process or torchrun/DDP)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from spinseg.acceleration.inference import predict_volume_fast, prepare_inference_model
from spinseg.acceleration.training import prepare_training_model
from spinseg.data.images import (
    ImageTrainingDataset,
    is_rgb_image_file,
    load_image,
    load_mask,
    predict_image,
)
from spinseg.data.slices import SliceTrainingDataset
from spinseg.data.transforms import AugmentationConfig, Normalization
from spinseg.data.volumes import (
    check_same_shape,
    check_volume_pairs,
    load_volume,
    read_paired_lists,
)
from spinseg.errors import UserInputError, fail, warn
from spinseg.evaluation.metrics import mean_over_subjects, release_metrics
from spinseg.io.files import write_json
from spinseg.io.progress import progress_bar
from spinseg.models import build_model
from spinseg.models.checkpoint import (
    load_model,
    load_state_dict_checked,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from spinseg.models.keras_weights import is_hdf5_file
from spinseg.models.model_config import model_input_config, parse_model_config
from spinseg.recipes.config import TrainConfig, schedule_value, validate_train_config
from spinseg.recipes.preprocessing import preprocessing_record
from spinseg.training.run_folder import (
    CHECKPOINT_PATTERN,
    check_free_space,
    check_writable,
    latest_complete_checkpoint,
    remove_stale_temporaries,
)
from spinseg.training.runtime import (
    DistributedContext,
    init_distributed,
    native_bf16,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
)

# Settings a resumed run must share with the run it continues, or its steps would mean something else.
RESUME_INVARIANTS = ("model_name", "n_batch", "n_chunk", "seed", "learning_rates", "learning_schedule", "crop_shape")


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


def check_resume_config(path: Path, saved: dict, config: TrainConfig) -> None:
    """Refuses to continue a run under settings that change what its steps mean."""
    changed = [
        f"--{name} {saved[name]!r} -> {getattr(config, name)!r}"
        for name in RESUME_INVARIANTS
        if name in saved and saved[name] != getattr(config, name)
    ]
    if changed:
        raise fail(path, "cannot resume with different settings: " + "; ".join(changed) + " (use --restore_path to start a new run from its weights)")


def validate(model, scan_paths, ground_truth_paths, config: TrainConfig, normalization, device) -> dict:
    """Release metrics per validation subject (3-D volume, or 2-D RGB image), averaged over subjects."""
    records = []
    # A fused, channels-last copy for speed; the training model itself is left as it is.
    inference_model = prepare_inference_model(model)
    for scan_path, ground_truth_path in zip(scan_paths, ground_truth_paths):
        if is_rgb_image_file(scan_path):
            mask = np.asarray(load_mask(ground_truth_path))
            probabilities = predict_image(model, np.asarray(load_image(scan_path)), normalization, device,
                                          output_shape=mask.shape, amp=config.amp)
        else:
            scan, mask = load_volume(scan_path), load_volume(ground_truth_path)
            check_same_shape(scan, scan_path, mask, ground_truth_path)
            probabilities, _ = predict_volume_fast(inference_model, scan, config.n_chunk, normalization,
                                                   config.val_batch_size, device, amp=config.amp)
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

    # Every input is checked before anything is written, so bad input leaves nothing half-written.
    scan_paths, ground_truth_paths = read_paired_lists(config.train_multimodal_scan_paths, config.train_ground_truth_path)
    # GLaS / RITE: RGB images (H, W, 3) with (H, W) masks instead of 3-D volumes.
    two_dimensional = is_rgb_image_file(scan_paths[0])
    first_shape = check_volume_pairs(scan_paths, ground_truth_paths, two_dimensional)
    validation_lists = None
    if config.val_multimodal_scan_paths:
        validation_lists = read_paired_lists(config.val_multimodal_scan_paths, config.val_ground_truth_path)
        if not two_dimensional:  # 2-D validation may score against original-size masks
            check_volume_pairs(*validation_lists)
    normalization = Normalization(config.dataset_normalization, config.dataset_means, config.dataset_stddevs)

    checkpoint_dir = Path(config.checkpoint_path)
    channels_per_slice = 3 if two_dimensional else 1
    model_config = model_input_config(config.model_name, config.n_chunk, channels_per_slice, parse_model_config(config.model_config))
    model = build_model(config.model_name, **model_config)
    model.preprocessing = preprocessing_record(config)  # saved in every checkpoint: evaluate/predict need no flags
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rates[0], weight_decay=config.w_weight_decay
    )
    step, best, resumed_loss = 0, {"dice": -1.0, "step": 0}, float("nan")

    restore, checkpoint = config.restore_path, None
    if config.resume and not restore:
        remove_stale_temporaries(checkpoint_dir / "checkpoints")
        found = latest_complete_checkpoint(checkpoint_dir / "checkpoints")
        if found:
            restore, checkpoint = found
            check_resume_config(restore, checkpoint.get("train_config", {}), config)
            print(f"resuming from {restore}", flush=True)
    if restore and is_hdf5_file(restore):  # the authors' Keras weights: no optimizer or training state
        checkpoint, loaded = {}, load_model(restore, config.model_name, **model_config)
    elif restore:
        checkpoint = checkpoint if checkpoint is not None else read_checkpoint(restore)
        loaded = model_from_checkpoint(checkpoint, restore, config.model_name, **model_config)
    if restore:
        # Strict, one-line check: a checkpoint of another configuration names the keys that differ.
        load_state_dict_checked(model, loaded.state_dict(), restore, f"model {config.model_name!r} as configured")
        if "optimizer_state_dict" in checkpoint:
            try:
                optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
            except (ValueError, KeyError) as error:
                raise fail(restore, f"optimizer state does not fit this model ({error})") from None
        train_state = checkpoint.get("train_state", {})
        step = int(train_state.get("step", checkpoint.get("train_step", 0)))
        best = train_state.get("best", best)
        resumed_loss = float(train_state.get("loss", float("nan")))
        if "rng_state" in checkpoint:
            set_rng_state(checkpoint["rng_state"])

    model.to(device)
    # Channels-last layout, exact CPU batch statistics, in-place block activations (spinseg.fast_training).
    prepare_training_model(model, device, channels_last=config.channels_last)
    # Weights + Adam's two moments (+ buffers, small): roughly what one checkpoint takes on disk.
    checkpoint_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    if context.is_main:
        check_writable(checkpoint_dir / "checkpoints", checkpoint_bytes)
    train_model = model
    if context.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward_model = torch.compile(train_model) if config.compile else train_model

    if config.n_batch % context.world_size:
        raise UserInputError(f"--n_batch {config.n_batch} must be divisible by the {context.world_size} processes")
    per_process_batch = config.n_batch // context.world_size
    dataset_class = ImageTrainingDataset if two_dimensional else SliceTrainingDataset
    dataset = dataset_class(
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
    # The loader draws its workers' base seed from this generator, re-seeded every epoch, instead of
    # from the global torch RNG: otherwise each epoch (and each resume) would advance the global RNG
    # by one draw, and a resumed run's RNG would drift from an uninterrupted one's.
    loader_generator = torch.Generator()
    # Batches are always full when the data allow it: a last batch of one sample would leave batch
    # norm a single value per channel at the coarsest scale of small crops (it cannot train on that).
    drop_last = sampler.num_samples >= per_process_batch
    loader = DataLoader(
        dataset,
        batch_size=per_process_batch,
        sampler=sampler,
        num_workers=config.n_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=loader_generator,
        drop_last=drop_last,
    )
    steps_per_epoch = (sampler.num_samples // per_process_batch) if drop_last else math.ceil(sampler.num_samples / per_process_batch)
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
            f"{len(dataset)} volumes of shape {first_shape}, {steps_per_epoch} steps per epoch, "
            f"{total_steps} steps, effective batch {config.n_batch} ({context.world_size} process(es))",
            flush=True,
        )
        if config.amp and not native_bf16(device):
            warn(f"--amp: {device} has no bf16 arithmetic units (AVX512-BF16 / AMX on CPUs), so bf16 is emulated "
                 "and slower than fp32 here")

    def save(current_step: int, loss_value: float) -> None:
        # A disk that filled up during training stops the run here, before a write could fail
        # half-way; either way the previous checkpoints are never touched (each step has its own file).
        check_free_space(checkpoint_dir / "checkpoints", checkpoint_bytes)
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

    progress = progress_bar(total=total_steps, initial=step, enabled=context.is_main, desc="train", dynamic_ncols=True)
    model.train()
    loss_value, start_time, start_step = resumed_loss, time.time(), step
    while step < total_steps:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        sampler.skip = (step - epoch * steps_per_epoch) * per_process_batch
        dataset.set_epoch(epoch)
        loader_generator.manual_seed(config.seed * 1_000_003 + epoch)
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
            # Validation first, so the checkpoint of this step already holds its "best": a run
            # resumed from it then neither repeats nor loses that validation.
            if config.n_validation and step % config.n_validation == 0 and step < total_steps:
                run_validation(step)
            if context.is_main and step % config.n_checkpoint == 0 and step < total_steps:
                save(step, loss_value)
            if context.enabled:
                dist.barrier()
            if step >= total_steps:
                break
    progress.close()

    if context.is_main:
        run_validation(step)
        save(step, loss_value)
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
