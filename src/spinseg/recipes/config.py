"""Training and evaluation settings in one place, with the paper's values as defaults.

Flag names are the release's (``--n_batch``, ``--learning_rates`` ...), so its recipes read the
same. :func:`add_dataclass_arguments` turns a dataclass into argparse flags, and
:func:`validate_train_config` rejects impossible values with one clear line.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field

from spinseg.constants import ATLAS_MEAN, ATLAS_STD
from spinseg.errors import UserInputError


@dataclass
class TrainConfig:
    """Everything ``python -m spinseg.train`` takes; defaults are the paper's SPiN recipe on ATLAS."""

    # Data: text files listing .npy volumes, line k of scans paired with line k of ground truths.
    train_multimodal_scan_paths: str = "training/atlas/traintest/train_scans.txt"
    train_ground_truth_path: str = "training/atlas/traintest/train_ground_truths.txt"
    val_multimodal_scan_paths: str = ""
    val_ground_truth_path: str = ""
    # Model: name in the registry; its config from --model_config (JSON) plus n_chunk.
    model_name: str = "spin"
    model_config: str = ""
    # Input: n_chunk adjacent axial slices; crop_shape trains on crops (CPU recipes), empty = full slices.
    n_batch: int = 8
    n_chunk: int = 5
    crop_shape: list[int] = field(default_factory=list)
    dataset_normalization: str = "standard"
    dataset_means: list[float] = field(default_factory=lambda: [ATLAS_MEAN])
    dataset_stddevs: list[float] = field(default_factory=lambda: [ATLAS_STD])
    # Optimisation: learning_rates[i] holds until epoch learning_schedule[i]; the last entry ends training.
    learning_rates: list[float] = field(default_factory=lambda: [3e-4, 1e-4, 5e-5])
    learning_schedule: list[int] = field(default_factory=lambda: [400, 1400, 1600])
    w_weight_decay: float = 0.0
    # Sampling: pick a slice containing lesion with this probability (-1 in a schedule = forever).
    positive_class_sample_rates: list[float] = field(default_factory=lambda: [0.95])
    positive_class_sample_schedule: list[int] = field(default_factory=lambda: [-1])
    # Augmentation: probability per schedule segment, then each transform with probability 0.5.
    augmentation_probabilities: list[float] = field(default_factory=lambda: [1.0, 0.5])
    augmentation_schedule: list[int] = field(default_factory=lambda: [1400, 1600])
    augmentation_flip_type: list[str] = field(default_factory=lambda: ["horizontal", "vertical"])
    augmentation_rotate: float = 30.0
    augmentation_noise_type: str = "gaussian"
    augmentation_noise_spread: float = 1e-2
    augmentation_resize_and_pad: list[float] = field(default_factory=lambda: [1.0, 1.1])
    # Loss: BCE with logits on the final logits, positive class weighted.
    loss_func_segmentation: str = "cross_entropy"
    w_positive_class: float = 1.5
    # Bookkeeping.
    n_summary: int = 1000
    n_checkpoint: int = 1000
    n_validation: int = 1000
    checkpoint_path: str = "trained_spin/atlas/spin_traintest"
    restore_path: str = ""
    resume: bool = False
    max_steps: int = -1
    # Runtime.
    device: str = "auto"
    n_workers: int = 4
    n_thread: int = 0
    seed: int = 1
    deterministic: bool = False
    amp: bool = False
    compile: bool = False
    allow_tf32: bool = False  # TF32 convolutions/matmuls on Ampere+ GPUs: faster, ~1e-3 off fp32 (off by default)
    channels_last: bool = True  # NHWC training (spinseg.fast_training); --no-channels_last for the plain layout
    val_batch_size: int = 16


@dataclass
class EvaluateConfig:
    """Everything ``python -m spinseg.evaluate`` takes."""

    multimodal_scan_paths: str = "testing/atlas/traintest/test_scans.txt"
    ground_truth_path: str = "testing/atlas/traintest/test_ground_truths.txt"
    small_lesion_only: bool = False
    small_lesion_slices_path: str = ""
    model_name: str = "spin"
    model_config: str = ""
    restore_path: str = ""
    n_chunk: int = 5
    dataset_normalization: str = "standard"
    dataset_means: list[float] = field(default_factory=lambda: [ATLAS_MEAN])
    dataset_stddevs: list[float] = field(default_factory=lambda: [ATLAS_STD])
    output_path: str = "outputs/spin_evaluation"
    method_name: str = ""
    metrics: list[str] = field(default_factory=lambda: ["release", "challenge", "size"])
    do_visualize_predictions: bool = False
    save_prediction_nifti: bool = False
    reference_nifti: str = ""
    test_time_flip: bool = False
    # The optimised path (batch norm folded into convolutions, channels-last, all-background slices
    # skipped) gives the same masks as the plain one (docs/performance.md); --plain_inference for the latter.
    plain_inference: bool = False
    batch_size: int = 8
    device: str = "auto"
    n_thread: int = 0
    amp: bool = False
    voxel_volume_ml: float = 0.001


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Adds one ``--<field>`` flag per dataclass field, typed and defaulted from the field."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        flag = f"--{item.name}"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(hint) is list:
            (element,) = typing.get_args(hint)
            parser.add_argument(flag, nargs="*", type=element, default=default)
        else:
            parser.add_argument(flag, type=hint, default=default)


def config_from_namespace(cls, namespace: argparse.Namespace):
    """Builds ``cls`` from the parsed flags of :func:`add_dataclass_arguments`."""
    return cls(**{item.name: getattr(namespace, item.name) for item in dataclasses.fields(cls)})


def schedule_value(values: list, schedule: list[int], epoch: int):
    """values[i] for the first i with epoch < schedule[i]; -1 in the schedule means forever; else the last."""
    for value, until in zip(values, schedule):
        if until < 0 or epoch < until:
            return value
    return values[-1]


def validate_train_config(config: TrainConfig) -> None:
    """Raises a one-line ``UserInputError`` for a value no training run can use."""
    problems = []
    if config.n_batch < 1:
        problems.append(f"--n_batch must be >= 1 (got {config.n_batch})")
    if config.n_chunk < 1 or config.n_chunk % 2 == 0:
        problems.append(f"--n_chunk must be odd and >= 1 (got {config.n_chunk})")
    # ``not rate > 0`` rather than ``rate <= 0``: NaN compares false both ways and must be refused too.
    if not config.learning_rates or any(not (rate > 0 and math.isfinite(rate)) for rate in config.learning_rates):
        problems.append(f"--learning_rates must be positive and finite (got {config.learning_rates})")
    if len(config.learning_rates) != len(config.learning_schedule):
        problems.append("--learning_rates and --learning_schedule need the same number of entries")
    if any(b <= a for a, b in zip(config.learning_schedule, config.learning_schedule[1:])) or any(
        epoch < 1 for epoch in config.learning_schedule
    ):
        problems.append(f"--learning_schedule must be positive and increasing (got {config.learning_schedule})")
    if len(config.augmentation_probabilities) != len(config.augmentation_schedule):
        problems.append("--augmentation_probabilities and --augmentation_schedule need the same number of entries")
    if any(not 0 <= p <= 1 for p in config.augmentation_probabilities + config.positive_class_sample_rates):
        problems.append("probabilities must lie in [0, 1]")
    if len(config.positive_class_sample_rates) != len(config.positive_class_sample_schedule):
        problems.append("--positive_class_sample_rates and --positive_class_sample_schedule need the same number of entries")
    if config.crop_shape and (len(config.crop_shape) != 2 or min(config.crop_shape) < 8):
        problems.append(f"--crop_shape needs two sizes >= 8 (got {config.crop_shape})")
    if not (config.w_positive_class > 0 and math.isfinite(config.w_positive_class)):
        problems.append(f"--w_positive_class must be positive (got {config.w_positive_class})")
    if not config.w_weight_decay >= 0:
        problems.append(f"--w_weight_decay must be >= 0 (got {config.w_weight_decay})")
    if not config.augmentation_noise_spread >= 0 or not config.augmentation_rotate >= 0:
        problems.append("--augmentation_noise_spread and --augmentation_rotate must be >= 0")
    resize = config.augmentation_resize_and_pad
    if len(resize) != 2 or not 0 < resize[0] <= resize[1]:
        problems.append(f"--augmentation_resize_and_pad needs two factors 0 < low <= high (got {resize})")
    if config.val_batch_size < 1 or config.n_workers < 0 or config.n_thread < 0:
        problems.append("--val_batch_size must be >= 1, --n_workers and --n_thread >= 0")
    if config.max_steps == 0 or config.max_steps < -1:
        problems.append(f"--max_steps must be >= 1, or -1 for the whole schedule (got {config.max_steps})")
    if config.loss_func_segmentation != "cross_entropy":
        problems.append(f"--loss_func_segmentation {config.loss_func_segmentation!r} is not supported (cross_entropy)")
    if min(config.n_summary, config.n_checkpoint) < 1 or config.n_validation < 0:
        problems.append("--n_summary and --n_checkpoint must be >= 1, --n_validation >= 0")
    if config.dataset_normalization not in ("standard", "none"):
        problems.append(f"--dataset_normalization must be standard or none (got {config.dataset_normalization!r})")
    if not config.dataset_stddevs or any(not s > 0 for s in config.dataset_stddevs):
        problems.append("--dataset_stddevs must be positive")
    if len(config.dataset_means) != len(config.dataset_stddevs):
        problems.append("--dataset_means and --dataset_stddevs need the same number of entries")
    if bool(config.val_multimodal_scan_paths) != bool(config.val_ground_truth_path):
        problems.append("give both --val_multimodal_scan_paths and --val_ground_truth_path, or neither")
    if problems:
        raise UserInputError("invalid training configuration: " + "; ".join(problems))
