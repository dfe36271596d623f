"""The training loop behind ``python -m spinseg.train`` (single process or torchrun/DDP)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from spinseg.acceleration.training import prepare_training_model
from spinseg.data.images import ImageTrainingDataset, is_rgb_image_file, load_image, load_mask
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
from spinseg.inference.predictor import InferenceOptions, predict_image, predict_volume, prepare_for_inference
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
from spinseg.models.model_config import ModelConfig, check_model_config, model_input_config, parse_model_config
from spinseg.recipes.config import TrainConfig, schedule_value, validate_train_config
from spinseg.recipes.preprocessing import preprocessing_record
from spinseg.runtime.devices import (
    DeviceLossTracker,
    configure_cuda_math,
    load_optimizer_state,
    prepare_distributed_batch_norm,
    read_loss_on_all_ranks,
    run_on_all_ranks,
)
from spinseg.training.epoch_loader import EpochSettingsDataset, EpochSettingsSampler
from spinseg.training.losses import build_loss, build_optimizer
from spinseg.training.plateau import (
    EarlyStopping,
    build_plateau_scheduler,
    validation_loss,
    volume_batches,
    watches_validation_loss,
)
from spinseg.training.release_data import ReleaseSliceTrainingDataset, release_validation_metrics, release_volume_batches
from spinseg.training.run_folder import (
    CHECKPOINT_PATTERN,
    check_free_space,
    check_writable,
    latest_complete_checkpoint,
    lock_run_folder,
    remove_stale_temporaries,
    unlock_run_folder,
)
from spinseg.runtime.distributed import (
    DistributedContext,
    ignore_interrupt_in_worker,
    init_distributed,
    native_bf16,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
)

# Settings a resumed run must share with the run it continues, or its steps would mean something else.
RESUME_INVARIANTS = ("model_name", "n_batch", "n_chunk", "seed", "learning_rates", "learning_schedule", "crop_shape",
                     "release_inputs")


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
    """Release metrics per validation subject (3-D volume, or 2-D RGB image), averaged over subjects;
    with ``--release_inputs`` on the preset's grid, as ``evaluate --preset`` scores them."""
    if config.release_inputs:
        return release_validation_metrics(model, scan_paths, ground_truth_paths, config, device)
    records = []
    options = InferenceOptions(normalization=normalization, n_chunk=config.n_chunk, batch_size=config.val_batch_size,
                               device=device, amp=config.amp, prepare=True, skip_background=True)
    # A fused, channels-last copy for speed; the training model itself is left as it is.
    inference_model = prepare_for_inference(model, options)
    for scan_path, ground_truth_path in zip(scan_paths, ground_truth_paths):
        if is_rgb_image_file(scan_path):
            mask = np.asarray(load_mask(ground_truth_path))
            # 2-D images run the training model itself, as before the single inference path (same scores bit for bit).
            probabilities = predict_image(model, np.asarray(load_image(scan_path)), replace(options, prepare=False),
                                          output_shape=mask.shape)
        else:
            scan, mask = load_volume(scan_path), load_volume(ground_truth_path)
            check_same_shape(scan, scan_path, mask, ground_truth_path)
            probabilities, _ = predict_volume(inference_model, scan, options)
        records.append(release_metrics(np.asarray(mask) > 0, probabilities > options.threshold))
    return mean_over_subjects(records)


def image_grid(images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, count: int = 4) -> torch.Tensor:
    """(B, C, H, W) inputs, targets and logits -> (n, 3, H, 3W) rows of scan | ground truth | prediction."""
    centre = images[:count, images.shape[1] // 2 : images.shape[1] // 2 + 1].float()
    low = centre.amin(dim=(2, 3), keepdim=True)
    high = centre.amax(dim=(2, 3), keepdim=True)
    scan = (centre - low) / (high - low + 1e-6)
    rows = torch.cat([scan, targets[:count].float(), torch.sigmoid(logits[:count].float())], dim=-1)
    return rows.repeat(1, 3, 1, 1).clamp(0, 1)


class TrainingInputs(NamedTuple):
    """The checked input lists of a run: training pairs, optional validation pairs, and their kind."""

    scan_paths: list[str]
    ground_truth_paths: list[str]
    two_dimensional: bool  # GLaS / RITE: RGB images (H, W, 3) with (H, W) masks instead of 3-D volumes
    first_shape: tuple
    validation_lists: tuple[list[str], list[str]] | None


@dataclass
class TrainingData:
    """What the loop reads: the dataset, its resumable sampler, and the loader over both."""

    dataset: Dataset
    sampler: ResumableDistributedSampler
    loader: DataLoader
    loader_generator: torch.Generator  # re-seeded every epoch (see build_training_data)
    per_process_batch: int
    steps_per_epoch: int


@dataclass
class TrainingRun:
    """Everything :func:`train` builds, and the state (step, best validation, last loss) its loop advances."""

    config: TrainConfig
    context: DistributedContext
    device: torch.device
    model: torch.nn.Module  # the network itself: what is saved and validated
    forward_model: torch.nn.Module  # what a step calls: the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    data: TrainingData
    normalization: Normalization
    validation_lists: tuple[list[str], list[str]] | None
    checkpoint_dir: Path
    checkpoint_bytes: int
    total_steps: int
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> scalar
    step: int = 0
    best: dict = field(default_factory=lambda: {"dice": -1.0, "step": 0})
    loss: float = float("nan")
    writer: Any = None  # tensorboard SummaryWriter, main process only
    # The loss stays on the device between reads: loss.item() every step would wait for the GPU.
    loss_tracker: DeviceLossTracker = field(default_factory=DeviceLossTracker)
    # --lr_schedule plateau / --early_stopping_patience (spinseg.training.plateau); None otherwise.
    scheduler: Any = None
    early_stopping: EarlyStopping | None = None
    stopped: bool = False  # early stopping ended the run
    validated_step: int = -1  # the last step validated (the end of the run does not validate it twice)


# ----------------------------------------------------------------------------------------------
# Build: inputs, model, optimizer, restored state, data.
# ----------------------------------------------------------------------------------------------


def read_training_inputs(config: TrainConfig) -> TrainingInputs:
    """Reads and checks the training (and validation) lists before anything is written,
    so bad input leaves nothing half-written."""
    scan_paths, ground_truth_paths = read_paired_lists(config.train_multimodal_scan_paths, config.train_ground_truth_path)
    two_dimensional = is_rgb_image_file(scan_paths[0])
    first_shape = check_volume_pairs(scan_paths, ground_truth_paths, two_dimensional)
    validation_lists = None
    if config.val_multimodal_scan_paths:
        validation_lists = read_paired_lists(config.val_multimodal_scan_paths, config.val_ground_truth_path)
        if not two_dimensional:  # 2-D validation may score against original-size masks
            check_volume_pairs(*validation_lists)
    return TrainingInputs(scan_paths, ground_truth_paths, two_dimensional, first_shape, validation_lists)


def check_input_width(given_config: ModelConfig, n_chunk: int, channels_per_slice: int) -> None:
    """A ``--model_config`` input_channels other than the slices' width ended in a convolution traceback at the
    first step, after the run folder was made; refuse it in one line before anything is written."""
    width = n_chunk * channels_per_slice
    if "input_channels" in given_config and "input_channels_segmentation" not in given_config and given_config["input_channels"] != width:
        raise UserInputError(f"{given_config.source}: input_channels {given_config['input_channels']} does not fit --n_chunk {n_chunk} "
                             f"({n_chunk} slice(s) x {channels_per_slice} channel(s) = {width}); leave input_channels out")


def restore_training_state(config: TrainConfig, checkpoint_dir: Path, model: torch.nn.Module, model_config: dict,
                           optimizer: torch.optim.Optimizer) -> tuple[int, dict, float, dict | None, dict]:
    """Loads ``--restore_path`` (or, with ``--resume``, the run's latest complete checkpoint) into
    ``model`` and restores the RNGs; returns (step, best validation, last loss, the optimizer's saved
    state, the saved train state). The optimizer state is loaded by the caller once the model is on its device, so Adam's
    moments follow the parameters there (:func:`spinseg.runtime.devices.load_optimizer_state`)."""
    step, best, loss = 0, {"dice": -1.0, "step": 0}, float("nan")
    restore, checkpoint = config.restore_path, None
    if config.resume and not restore:
        remove_stale_temporaries(checkpoint_dir / "checkpoints")
        found = latest_complete_checkpoint(checkpoint_dir / "checkpoints")
        if found:
            restore, checkpoint = found
            check_resume_config(restore, checkpoint.get("train_config", {}), config)
            print(f"resuming from {restore}", flush=True)
    if not restore:
        return step, best, loss, None, {}
    if is_hdf5_file(restore):  # the authors' Keras weights: no optimizer or training state
        checkpoint, loaded = {}, load_model(restore, config.model_name, **model_config)
    else:
        checkpoint = checkpoint if checkpoint is not None else read_checkpoint(restore)
        loaded = model_from_checkpoint(checkpoint, restore, config.model_name, **model_config)
    # Strict, one-line check: a checkpoint of another configuration names the keys that differ.
    load_state_dict_checked(model, loaded.state_dict(), restore, f"model {config.model_name!r} as configured")
    train_state = checkpoint.get("train_state", {})
    step = int(train_state.get("step", checkpoint.get("train_step", 0)))
    best = train_state.get("best", best)
    loss = float(train_state.get("loss", float("nan")))
    if "rng_state" in checkpoint:
        set_rng_state(checkpoint["rng_state"])
    return step, best, loss, checkpoint.get("optimizer_state_dict"), train_state


def wrap_for_training(model: torch.nn.Module, config: TrainConfig, context: DistributedContext,
                      device: torch.device) -> torch.nn.Module:
    """What a training step calls: ``model`` itself, in DistributedDataParallel under torchrun,
    compiled with ``--compile``. The returned module shares ``model``'s parameters."""
    train_model = model
    if context.enabled:
        # SyncBatchNorm on several GPUs (each sees n_batch / N samples), a warning on CPUs.
        train_model = prepare_distributed_batch_norm(model, device, context.world_size, config.n_batch // context.world_size)
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(train_model) if config.compile else train_model


def build_training_data(config: TrainConfig, context: DistributedContext, device: torch.device,
                        inputs: TrainingInputs, normalization: Normalization) -> TrainingData:
    """The slice (or 2-D image) dataset, this process's shard of it, and the loader of its batches."""
    if config.n_batch % context.world_size:
        raise UserInputError(f"--n_batch {config.n_batch} must be divisible by the {context.world_size} processes")
    per_process_batch = config.n_batch // context.world_size
    augmentation = AugmentationConfig(
        tuple(config.augmentation_flip_type),
        config.augmentation_rotate,
        config.augmentation_noise_type,
        config.augmentation_noise_spread,
        tuple(config.augmentation_resize_and_pad),
    )
    if config.release_inputs:  # the release's window, scaling and stack (spinseg.training.release_data)
        if inputs.two_dimensional:
            raise UserInputError("--release_inputs prepares 3-D ATLAS volumes, not 2-D images")
        dataset = ReleaseSliceTrainingDataset(inputs.scan_paths, inputs.ground_truth_paths, config.release_inputs,
                                              augmentation=augmentation, seed=config.seed)
    else:
        dataset_class = ImageTrainingDataset if inputs.two_dimensional else SliceTrainingDataset
        dataset = dataset_class(
            inputs.scan_paths,
            inputs.ground_truth_paths,
            n_chunk=config.n_chunk,
            normalization=normalization,
            augmentation=augmentation,
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
        EpochSettingsDataset(dataset),  # workers stay alive across epochs; each index carries its epoch's settings
        batch_size=per_process_batch,
        sampler=EpochSettingsSampler(sampler, dataset),
        num_workers=config.n_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.n_workers > 0,
        generator=loader_generator,
        drop_last=drop_last,
        worker_init_fn=ignore_interrupt_in_worker,  # Ctrl-C reaches only the main process
    )
    steps_per_epoch = (sampler.num_samples // per_process_batch) if drop_last else math.ceil(sampler.num_samples / per_process_batch)
    return TrainingData(dataset, sampler, loader, loader_generator, per_process_batch, steps_per_epoch)


def build_run(config: TrainConfig) -> TrainingRun:
    """Checks the inputs, then builds (or restores) the model, optimizer and data of a run, in an
    order that keeps every random draw where a resumed run expects it."""
    validate_train_config(config)
    context: DistributedContext = init_distributed(config.device)
    device = select_device(config.device, context.local_rank)
    if config.n_thread > 0:
        torch.set_num_threads(config.n_thread)
    seed_everything(config.seed, config.deterministic)
    configure_cuda_math(device, config.allow_tf32, config.deterministic)  # TF32 off unless asked; cuDNN autotuner
    inputs = read_training_inputs(config)
    normalization = Normalization(config.dataset_normalization, config.dataset_means, config.dataset_stddevs)

    checkpoint_dir = Path(config.checkpoint_path)
    channels_per_slice = 3 if inputs.two_dimensional else 1
    given_config = parse_model_config(config.model_config)
    check_model_config(config.model_name, given_config)  # unknown key, wrong type: one line naming the file
    model_config = model_input_config(config.model_name, config.n_chunk, channels_per_slice, given_config)
    check_input_width(given_config, config.n_chunk, channels_per_slice)
    model = build_model(config.model_name, **model_config)
    model.preprocessing = preprocessing_record(config)  # saved in every checkpoint: evaluate/predict need no flags
    # Loss and optimiser by name: SPiN's (cross_entropy, adam) or a baseline's release recipe.
    optimizer = build_optimizer(config.optimizer, [p for p in model.parameters() if p.requires_grad],
                                config.learning_rates[0], config.w_weight_decay)
    if context.is_main and checkpoint_dir.is_dir():
        lock_run_folder(checkpoint_dir)  # before a resume cleans or reads the folder
    step, best, loss, optimizer_state, train_state = restore_training_state(config, checkpoint_dir, model, model_config, optimizer)

    model.to(device)
    # Channels-last layout, exact CPU batch statistics, in-place block activations (spinseg.acceleration.training).
    prepare_training_model(model, device, channels_last=config.channels_last)
    if optimizer_state is not None:  # now that the parameters are on the device: Adam's state follows them
        try:
            load_optimizer_state(optimizer, optimizer_state)
        except (ValueError, KeyError) as error:
            raise fail(config.restore_path or checkpoint_dir, f"optimizer state does not fit this model ({error})") from None
    # Weights + Adam's two moments (+ buffers, small): roughly what one checkpoint takes on disk.
    checkpoint_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    if context.is_main:
        check_writable(checkpoint_dir / "checkpoints", checkpoint_bytes)
        lock_run_folder(checkpoint_dir)  # a second trainer on this folder stops with one line naming the holder
    forward_model = wrap_for_training(model, config, context, device)

    data = build_training_data(config, context, device, inputs, normalization)
    total_steps = config.learning_schedule[-1] * data.steps_per_epoch
    if config.max_steps > 0:
        total_steps = min(total_steps, config.max_steps)
    run = TrainingRun(config, context, device, model, forward_model, optimizer, data, normalization,
                      inputs.validation_lists, checkpoint_dir, checkpoint_bytes, total_steps,
                      build_loss(config.loss_func_segmentation, config.w_positive_class), step=step, best=best, loss=loss)
    start_plateau(run, train_state, inputs.two_dimensional)
    if context.is_main:
        open_log(run, inputs.first_shape, model_config)
    return run


def start_plateau(run: TrainingRun, train_state: dict, two_dimensional: bool) -> None:
    """The plateau scheduler and early stopping of the run (spinseg.training.plateau), as a resumed
    checkpoint left them; after the optimizer state, whose learning rate the scheduler keeps."""
    config = run.config
    if not watches_validation_loss(config):
        return
    if run.validation_lists is None:  # as Keras's callbacks without validation data: warned, then inactive
        if run.context.is_main:
            warn("--lr_schedule plateau / --early_stopping_patience watch the validation loss, but no validation "
                 "lists were given: the learning rate stays --learning_rates[0] and training runs to the end")
        return
    if two_dimensional:
        raise UserInputError("--lr_schedule plateau / --early_stopping_patience: validation loss of 3-D volumes only")
    run.scheduler = build_plateau_scheduler(run.optimizer, config)
    run.early_stopping = EarlyStopping(config.early_stopping_patience, **train_state.get("early_stopping", {}))
    if run.scheduler is not None and "lr_scheduler" in train_state:
        run.scheduler.load_state_dict(train_state["lr_scheduler"])


def open_log(run: TrainingRun, first_shape: tuple, model_config: dict) -> None:
    """Main process: opens the tensorboard writer, writes config.json and prints what will run."""
    from torch.utils.tensorboard import SummaryWriter

    config, device = run.config, run.device
    run.writer = SummaryWriter(str(run.checkpoint_dir / "tensorboard"), purge_step=run.step + 1 if run.step else None)
    write_json(run.checkpoint_dir / "config.json", {**asdict(config), "model_config": model_config})
    print(
        f"training {config.model_name} ({sum(p.numel() for p in run.model.parameters()):,} parameters) on {device}, "
        f"{len(run.data.dataset)} volumes of shape {first_shape}, {run.data.steps_per_epoch} steps per epoch, "
        f"{run.total_steps} steps, effective batch {config.n_batch} ({run.context.world_size} process(es))",
        flush=True,
    )
    if config.amp and not native_bf16(device):
        warn(f"--amp: {device} has no bf16 arithmetic units (AVX512-BF16 / AMX on CPUs), so bf16 is emulated "
             "and slower than fp32 here")


# ----------------------------------------------------------------------------------------------
# Step and epoch.
# ----------------------------------------------------------------------------------------------


def batch_to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device,
                    channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) images and (B, 1, H, W) targets on ``device``; images channels-last if asked."""
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets


def training_step(forward_model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  targets: torch.Tensor, loss_function, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on one batch: images (B, C, H, W) and targets (B, 1, H, W) on the model's device.

    The forward pass runs under bf16 autocast with ``amp``; the loss (the recipe's, e.g. SPiN's weighted
    binary cross-entropy) is taken in fp32. Returns (the loss before the step (), the logits (B, 1, H, W)).
    """
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = forward_model(images)
    loss = loss_function(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def start_epoch(run: TrainingRun, epoch: int) -> float:
    """Positions the sampler (mid-epoch after a resume), seeds the epoch's augmentation and loader,
    and applies the epoch's schedules; returns its learning rate."""
    config, data = run.config, run.data
    data.sampler.set_epoch(epoch)
    data.sampler.skip = (run.step - epoch * data.steps_per_epoch) * data.per_process_batch
    data.dataset.set_epoch(epoch)
    data.loader_generator.manual_seed(config.seed * 1_000_003 + epoch)
    data.dataset.augmentation_probability = schedule_value(config.augmentation_probabilities, config.augmentation_schedule, epoch)
    data.dataset.positive_class_sample_rate = schedule_value(
        config.positive_class_sample_rates, config.positive_class_sample_schedule, epoch
    )
    if run.scheduler is not None:  # the plateau scheduler sets the rate at validations
        return run.optimizer.param_groups[0]["lr"]
    learning_rate = schedule_value(config.learning_rates, config.learning_schedule, epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate
    return learning_rate


def log_step(run: TrainingRun, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, learning_rate: float) -> None:
    """Main process, every ``--n_summary`` steps (and the first): loss, schedules and an image grid to tensorboard."""
    if not run.context.is_main or not (run.step % run.config.n_summary == 0 or run.step == 1):
        return
    run.writer.add_scalar("train/loss", run.loss, run.step)
    run.writer.add_scalar("train/learning_rate", learning_rate, run.step)
    run.writer.add_scalar("train/augmentation_probability", run.data.dataset.augmentation_probability, run.step)
    run.writer.add_images("train/scan_groundtruth_prediction", image_grid(images, targets, logits.detach()), run.step)


def validates_now(run: TrainingRun) -> bool:
    """Whether this step validates: every ``--validation_epochs`` epochs, else every ``--n_validation`` steps."""
    config = run.config
    interval = config.validation_epochs * run.data.steps_per_epoch if config.validation_epochs else config.n_validation
    return bool(interval and run.step % interval == 0)


def saves_now(run: TrainingRun) -> bool:
    """Whether this step validates or saves a checkpoint."""
    return run.step % run.config.n_checkpoint == 0 or validates_now(run)


def loss_is_read(run: TrainingRun) -> bool:
    """Whether the device loss is read back now: at summaries, the first and last step, and before a save."""
    return run.step % run.config.n_summary == 0 or run.step == 1 or run.step >= run.total_steps or saves_now(run)


def after_step(run: TrainingRun) -> None:
    """Validation and checkpoint when due (not at the last step: :func:`finish_run` does those). The
    work is rank-local; then every rank learns whether any failed, instead of waiting in a barrier."""
    if not saves_now(run) or run.step >= run.total_steps:
        return

    def validate_and_save() -> None:
        config = run.config
        # Validation first, so the checkpoint of this step already holds its "best": a run
        # resumed from it then neither repeats nor loses that validation.
        if validates_now(run):
            validate_and_keep_best(run)
        if run.context.is_main and run.step % config.n_checkpoint == 0:
            save_step_checkpoint(run)

    run_on_all_ranks(run.context.enabled, run.device, validate_and_save)
    if run.context.enabled and run.early_stopping is not None:
        share_plateau_decision(run)


def share_plateau_decision(run: TrainingRun) -> None:
    """Under torchrun: every rank takes the main process's learning rate and early-stopping decision."""
    import torch.distributed as dist

    decision = [run.optimizer.param_groups[0]["lr"], run.stopped]
    dist.broadcast_object_list(decision, src=0)
    for group in run.optimizer.param_groups:
        group["lr"] = decision[0]
    run.stopped = decision[1]


def train_epoch(run: TrainingRun, progress) -> None:
    """Runs the rest of the current epoch (all of it, or what a resume left), or up to the last step."""
    epoch = run.step // run.data.steps_per_epoch
    learning_rate = start_epoch(run, epoch)
    for images, targets in run.data.loader:
        images, targets = batch_to_device(images, targets, run.device, run.config.channels_last)
        loss, logits = training_step(run.forward_model, run.optimizer, images, targets, run.loss_function, run.config.amp)
        run.step += 1
        run.loss_tracker.add(loss)
        progress.update(1)
        if loss_is_read(run):  # every rank learns of a NaN on any rank (read_loss_on_all_ranks raises)
            run.loss = read_loss_on_all_ranks(run.loss_tracker, run.step, run.context.enabled, run.device)
            progress.set_postfix(loss=f"{run.loss:.4f}", lr=f"{learning_rate:.1e}", epoch=epoch)
        log_step(run, images, targets, logits, learning_rate)
        after_step(run)
        if run.step >= run.total_steps or run.stopped:
            break


# ----------------------------------------------------------------------------------------------
# Validate and save.
# ----------------------------------------------------------------------------------------------


def validate_and_keep_best(run: TrainingRun) -> None:
    """Main process with validation lists: validates, logs, and saves ``best.pth`` when Dice improved."""
    if run.validation_lists is None or not run.context.is_main:
        return
    run.validated_step = run.step
    metrics = validate(run.model, *run.validation_lists, run.config, run.normalization, run.device)
    if run.early_stopping is not None:
        step_plateau(run)
    run.model.train()
    for name, value in metrics.items():
        run.writer.add_scalar(f"validation/{name}", value, run.step)
    improved = metrics["dice"] > run.best["dice"]
    if improved:
        run.best = {**metrics, "step": run.step}
        save_checkpoint(run.checkpoint_dir / "best.pth", run.model, train_state={"step": run.step, "best": run.best})
    print(
        f"step {run.step}: validation " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        + ("  (best so far)" if improved else f"  (best {run.best['dice']:.4f} at step {run.best['step']})"),
        flush=True,
    )


def step_plateau(run: TrainingRun) -> None:
    """Main process: the validation loss, then the plateau scheduler's step and the early-stopping check."""
    batches = release_volume_batches if run.config.release_inputs else volume_batches
    loss = validation_loss(run.model, *run.validation_lists, run.config, run.normalization, run.loss_function,
                           run.device, batches)
    if run.scheduler is not None:
        run.scheduler.step(loss)
    run.stopped = run.early_stopping.update(loss)
    learning_rate = run.optimizer.param_groups[0]["lr"]
    run.writer.add_scalar("validation/loss", loss, run.step)
    print(f"step {run.step}: validation loss {loss:.4f}, learning rate {learning_rate:.3g}"
          + (f"; no lower validation loss for {run.early_stopping.wait} validations: stopping" if run.stopped else ""),
          flush=True)


def plateau_state(run: TrainingRun) -> dict:
    """The plateau scheduler's and early stopping's state for a checkpoint (nothing without them)."""
    if run.early_stopping is None:
        return {}
    state = {"early_stopping": {"best": run.early_stopping.best, "wait": run.early_stopping.wait}}
    if run.scheduler is not None:
        state["lr_scheduler"] = run.scheduler.state_dict()
    return state


def save_step_checkpoint(run: TrainingRun) -> Path:
    """Writes this step's checkpoint (weights, optimizer, train state, RNGs, config); returns its path."""
    # A disk that filled up during training stops the run here, before a write could fail
    # half-way; either way the previous checkpoints are never touched (each step has its own file).
    check_free_space(run.checkpoint_dir / "checkpoints", run.checkpoint_bytes)
    path = step_checkpoint_path(run)
    save_checkpoint(
        path,
        run.model,
        optimizer_state_dict=run.optimizer.state_dict(),
        train_state={"step": run.step, "epoch": run.step // run.data.steps_per_epoch, "best": run.best, "loss": run.loss,
                     **plateau_state(run)},
        rng_state=rng_state(),
        train_config=asdict(run.config),
    )
    return path


def step_checkpoint_path(run: TrainingRun) -> Path:
    """``<checkpoint_path>/checkpoints/model-<step>.pth`` of the run's current step."""
    return run.checkpoint_dir / "checkpoints" / CHECKPOINT_PATTERN.format(step=run.step)


def finish_run(run: TrainingRun) -> None:
    """Last validation and checkpoint (main process); every rank learns whether that failed."""

    def finish() -> None:
        if run.context.is_main:
            if run.validated_step != run.step:  # early stopping has just validated this step
                validate_and_keep_best(run)
            save_step_checkpoint(run)
            run.writer.flush()
            run.writer.close()

    run_on_all_ranks(run.context.enabled, run.device, finish)


def train(config: TrainConfig) -> dict:
    """Trains ``config.model_name`` and returns a summary (steps, final loss, best validation metrics).

    Writes checkpoints (atomically) and tensorboard logs under ``config.checkpoint_path``.
    """
    run = build_run(config)
    progress = progress_bar(total=run.total_steps, initial=run.step, enabled=run.context.is_main, desc="train", dynamic_ncols=True)
    run.model.train()
    start_time, start_step = time.time(), run.step
    while run.step < run.total_steps and not run.stopped:
        train_epoch(run, progress)
    progress.close()
    finish_run(run)
    seconds = time.time() - start_time
    if run.context.is_main:
        unlock_run_folder(run.checkpoint_dir)
        print(f"done: {run.step} steps in {seconds:.0f} s, last loss {run.loss:.4f}; checkpoints in {run.checkpoint_dir}", flush=True)
    return {
        "steps": run.step,
        "stopped_early": run.stopped,
        "final_loss": run.loss,
        "best": run.best,
        "seconds": seconds,
        "steps_per_second": (run.step - start_step) / max(seconds, 1e-9),
        "checkpoint": str(step_checkpoint_path(run)),
    }
