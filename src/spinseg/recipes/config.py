"""Training and evaluation settings in one place, with the paper's values as defaults.

Flag names are the release's (``--n_batch``, ``--learning_rates`` ...), so its recipes read the
same. :func:`add_dataclass_arguments` turns a dataclass into argparse flags, and
:func:`validate_train_config` rejects impossible values with one clear line.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from spinseg.constants import ATLAS_MEAN, ATLAS_STD
from spinseg.errors import UserInputError


def option(default, help: str, aliases: tuple[str, ...] = ()):
    """A dataclass field with its ``--help`` text (and other flag spellings) in the metadata.

    A list default is copied per instance (``default_factory``), so instances never share it.
    """
    metadata = {"help": help, "aliases": aliases}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# The common spelling of a concept across commands (docs/cli.md); the release's name stays the field's.
MODEL_FLAG, CHECKPOINT_FLAG, OUTPUT_FLAG, BATCH_FLAG = ("--model",), ("--checkpoint",), ("--output",), ("--batch_size",)
FROM_CHECKPOINT = "default: from the checkpoint's preprocessing record, else the model's recipe"

# Losses and optimisers the trainer builds by name (spinseg.training.losses implements them).
LOSS_NAMES = ("cross_entropy", "bce_dice", "soft_dice", "eml", "two_class_cross_entropy")
OPTIMIZER_NAMES = ("adam", "sgd")
LR_SCHEDULE_NAMES = ("steps", "plateau")


@dataclass
class TrainConfig:
    """Everything ``python -m spinseg.train`` takes; defaults are the paper's SPiN recipe on ATLAS."""

    # Data: text files listing .npy volumes, line k of scans paired with line k of ground truths.
    train_multimodal_scan_paths: str = option("training/atlas/traintest/train_scans.txt", "list file of training scans (.npy), one a line")
    train_ground_truth_path: str = option("training/atlas/traintest/train_ground_truths.txt", "list file of training masks, line k pairs with scan k")
    val_multimodal_scan_paths: str = option("", "list file of validation scans; empty: no validation")
    val_ground_truth_path: str = option("", "list file of validation masks (with --val_multimodal_scan_paths)")
    # Model: name in the registry; its config from --model_config (JSON) plus n_chunk.
    model_name: str = option("spin", "network: spin, unet, dunet, clcinet, kiunet or xnet", MODEL_FLAG)
    model_config: str = option("", "JSON object (or JSON file) of constructor arguments; empty: the model's defaults")
    # Input: n_chunk adjacent axial slices; crop_shape trains on crops (CPU recipes), empty = full slices.
    n_batch: int = option(8, "slices per optimiser step (all processes together)", BATCH_FLAG)
    n_chunk: int = option(5, "adjacent axial slices stacked as input channels: odd n centred on the target, "
                          "even n the release D-UNet's i-n/2 .. i+n/2-1")
    crop_shape: list[int] = option([], "train on random crops HEIGHT WIDTH; empty: whole slices")
    dataset_normalization: str = option("standard", "intensity normalisation: standard ((x - mean) / std) or none")
    dataset_means: list[float] = option([ATLAS_MEAN], "mean per input channel (one value: all channels)")
    dataset_stddevs: list[float] = option([ATLAS_STD], "standard deviation per input channel")
    release_inputs: str = option("", "prepare training and validation inputs as the release preset of this method "
                                 "(xnet, clcinet, dunet, kiunet; docs/release_presets.md): its fixed window or resize, "
                                 "intensity scaling and slice stack replace --crop_shape and --dataset_normalization; "
                                 "evaluate with --preset (default: none)")
    # Optimisation: learning_rates[i] holds until epoch learning_schedule[i]; the last entry ends training.
    learning_rates: list[float] = option([3e-4, 1e-4, 5e-5], "Adam learning rate per schedule segment")
    learning_schedule: list[int] = option([400, 1400, 1600], "epoch at which each learning rate ends; the last ends training")
    w_weight_decay: float = option(0.0, "Adam weight decay")
    # X-Net's and CLCI-Net's release: Keras ReduceLROnPlateau and EarlyStopping on the validation loss.
    lr_schedule: str = option("steps", "learning-rate schedule: steps (--learning_rates until each --learning_schedule "
                              "epoch) or plateau (--learning_rates[0], times --plateau_factor whenever the validation "
                              "loss has not improved for --plateau_patience validations)")
    plateau_factor: float = option(0.2, "plateau schedule: learning-rate multiplier at each reduction")
    plateau_patience: int = option(3, "plateau schedule: validations without improvement before a reduction (Keras's count)")
    plateau_min_delta: float = option(1e-3, "plateau schedule: an improvement lowers the validation loss by more than this")
    early_stopping_patience: int = option(0, "stop after this many validations without a lower validation loss (0: never)")
    validation_epochs: int = option(0, "validate every this many epochs instead of every --n_validation steps (0: by steps)")
    # Sampling: pick a slice containing lesion with this probability (-1 in a schedule = forever).
    positive_class_sample_rates: list[float] = option([0.95], "probability of drawing a slice with lesion, per segment")
    positive_class_sample_schedule: list[int] = option([-1], "epoch at which each sample rate ends (-1: never)")
    # Augmentation: probability per schedule segment, then each transform with probability 0.5.
    augmentation_probabilities: list[float] = option([1.0, 0.5], "probability of augmenting a batch, per segment")
    augmentation_schedule: list[int] = option([1400, 1600], "epoch at which each augmentation probability ends")
    augmentation_flip_type: list[str] = option(["horizontal", "vertical"], "flips to draw from")
    augmentation_rotate: float = option(30.0, "largest rotation in degrees")
    augmentation_noise_type: str = option("gaussian", "additive noise kind")
    augmentation_noise_spread: float = option(1e-2, "noise standard deviation (normalised units)")
    augmentation_resize_and_pad: list[float] = option([1.0, 1.1], "zoom factor range LOW HIGH (resize, then crop or pad)")
    # Loss: BCE with logits on the final logits, positive class weighted.
    loss_func_segmentation: str = option("cross_entropy", "loss: cross_entropy (SPiN: binary, with logits), bce_dice, soft_dice, eml, two_class_cross_entropy (spinseg.training.losses)")
    w_positive_class: float = option(1.5, "weight of lesion pixels in the loss")
    optimizer: str = option("adam", "optimiser: adam, or sgd (D-UNet's release recipe)")
    # Bookkeeping.
    n_summary: int = option(1000, "steps between tensorboard summaries")
    n_checkpoint: int = option(1000, "steps between checkpoints")
    n_validation: int = option(1000, "steps between validations (0: none)")
    checkpoint_path: str = option("trained_spin/atlas/spin_traintest", "output folder: checkpoints/, tensorboard/, config.json", OUTPUT_FLAG)
    restore_path: str = option("", "start from this checkpoint's weights (and optimiser state)", CHECKPOINT_FLAG)
    resume: bool = option(False, "continue the newest complete checkpoint in the output folder")
    max_steps: int = option(-1, "stop after this many steps (-1: the whole schedule)")
    # Runtime.
    device: str = option("auto", "auto, cpu or cuda")
    n_workers: int = option(4, "data-loading worker processes")
    n_thread: int = option(0, "torch CPU threads (0: torch's default)")
    seed: int = option(1, "random seed")
    deterministic: bool = option(False, "deterministic algorithms (slower)")
    amp: bool = option(False, "bfloat16 autocast (GPUs; CPUs with AVX512-BF16 or AMX)")
    compile: bool = option(False, "torch.compile the model")
    allow_tf32: bool = option(False, "TF32 convolutions/matmuls on Ampere+ GPUs: faster, ~1e-3 off fp32 "
                              "(default off; ignored with --deterministic)")
    # NHWC training (spinseg.acceleration.training); --no-channels_last for the plain layout.
    channels_last: bool = option(True, "channels-last (NHWC) training")
    val_batch_size: int = option(16, "slices per forward pass during validation")


@dataclass
class EvaluateConfig:
    """Everything ``python -m spinseg.evaluate`` takes.

    The preprocessing fields (model, its config, slices, normalisation, threshold) are None unless
    given: they then come from the checkpoint (``spinseg.recipes.preprocessing``).
    """

    multimodal_scan_paths: str = option("testing/atlas/traintest/test_scans.txt", "list file of test scans (.npy), one a line")
    ground_truth_path: str = option("testing/atlas/traintest/test_ground_truths.txt", "list file of test masks, line k pairs with scan k")
    small_lesion_only: bool = option(False, "kept for the release's scripts (use --small_lesion_slices_path)")
    small_lesion_slices_path: str = option("", "list file of per-subject slice-index files for Table 3")
    preset: str = option("", "evaluate as the release evaluated this method: spin, unet, xnet, clcinet, dunet, kiunet (docs/release_presets.md)")
    recipe: str = option("", "named recipe (spinseg.recipes.named) for what the checkpoint does not record")
    model_name: str | None = option(None, f"network ({FROM_CHECKPOINT})", MODEL_FLAG)
    model_config: str = option("", "JSON object (or file) of constructor arguments over the checkpoint's")
    restore_path: str = option("", "checkpoint to evaluate (ours, .safetensors or the release's)", CHECKPOINT_FLAG)
    n_chunk: int | None = option(None, f"stacked slices ({FROM_CHECKPOINT})")
    dataset_normalization: str | None = option(None, f"standard or none ({FROM_CHECKPOINT})")
    dataset_means: list[float] | None = option(None, f"mean per input channel ({FROM_CHECKPOINT})")
    dataset_stddevs: list[float] | None = option(None, f"standard deviation per input channel ({FROM_CHECKPOINT})")
    threshold: float | None = option(None, f"mask = probability > threshold ({FROM_CHECKPOINT})")
    output_path: str = option("outputs/spin_evaluation", "output folder of results.txt, report.md, plots", OUTPUT_FLAG)
    method_name: str = option("", "row label in the tables (default: the model's display name)")
    metrics: list[str] = option(["release", "challenge", "size"], "metric groups: release, challenge, size, boundary (HD95, ASSD, NSD)")
    do_visualize_predictions: bool = option(False, "write a PNG panel per slice with lesion")
    save_prediction_nifti: bool = option(False, "write each predicted mask as NIfTI")
    reference_nifti: str = option("", "NIfTI whose affine the written masks get (default: MNI152)")
    test_time_flip: bool = option(False, "average with the left-right flipped slice")
    # The optimised path (batch norm folded into convolutions, channels-last, all-background slices
    # skipped) gives the same masks as the plain one (docs/performance.md); --plain_inference for the latter.
    plain_inference: bool = option(False, "run the model as loaded (no folded batch norm, no skipping)")
    batch_size: int = option(8, "slices per forward pass", ("--n_batch",))
    device: str = option("auto", "auto, cpu or cuda")
    n_thread: int = option(0, "torch CPU threads (0: torch's default)")
    amp: bool = option(False, "bfloat16 autocast (GPUs; CPUs with AVX512-BF16 or AMX)")
    voxel_volume_ml: float = option(0.001, "volume of one voxel in ml (lesion volumes)")
    boundary_tolerance_mm: float = option(2.0, "tolerance of the normalised surface Dice in mm (--metrics boundary)")


def flag_type(hint):
    """(type, is_list) of a field's annotation: ``list[float] | None`` -> (float, True)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [item for item in typing.get_args(hint) if item is not type(None)]
    if typing.get_origin(hint) is list:
        (element,) = typing.get_args(hint)
        return element, True
    return hint, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Adds one ``--<field>`` flag per dataclass field (plus its aliases), typed, defaulted and
    explained from the field: ``--help`` shows each flag's meaning and default."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        flags = [f"--{item.name}", *item.metadata.get("aliases", ())]
        text = item.metadata.get("help", "")
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{text} (default: {shown})" if default is not None and "default:" not in text else text
        help_text = help_text.replace("%", "%%")
        element, is_list = flag_type(hints[item.name])
        if element is bool:
            parser.add_argument(*flags, dest=item.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif is_list:
            parser.add_argument(*flags, dest=item.name, nargs="*", type=element, default=default, help=help_text)
        else:
            parser.add_argument(*flags, dest=item.name, type=element, default=default, help=help_text)


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
    problems = numeric_problems(dataclasses.asdict(config))  # the one range table
    if not config.learning_rates or not config.dataset_stddevs:
        problems.append("--learning_rates and --dataset_stddevs need at least one value")
    if len(config.learning_rates) != len(config.learning_schedule):
        problems.append("--learning_rates and --learning_schedule need the same number of entries")
    if any(b <= a for a, b in zip(config.learning_schedule, config.learning_schedule[1:])) or any(
        epoch < 1 for epoch in config.learning_schedule
    ):
        problems.append(f"--learning_schedule must be positive and increasing (got {config.learning_schedule})")
    if len(config.augmentation_probabilities) != len(config.augmentation_schedule):
        problems.append("--augmentation_probabilities and --augmentation_schedule need the same number of entries")
    if len(config.positive_class_sample_rates) != len(config.positive_class_sample_schedule):
        problems.append("--positive_class_sample_rates and --positive_class_sample_schedule need the same number of entries")
    if config.crop_shape and (len(config.crop_shape) != 2 or min(config.crop_shape) < 8):
        problems.append(f"--crop_shape needs two sizes >= 8 (got {config.crop_shape})")
    resize = config.augmentation_resize_and_pad
    if len(resize) != 2 or not 0 < resize[0] <= resize[1]:
        problems.append(f"--augmentation_resize_and_pad needs two factors 0 < low <= high (got {resize})")
    if config.max_steps == 0 or config.max_steps < -1:
        problems.append(f"--max_steps must be >= 1, or -1 for the whole schedule (got {config.max_steps})")
    if config.loss_func_segmentation not in LOSS_NAMES:
        problems.append(f"--loss_func_segmentation {config.loss_func_segmentation!r} is not one of {', '.join(LOSS_NAMES)}")
    if config.optimizer not in OPTIMIZER_NAMES:
        problems.append(f"--optimizer {config.optimizer!r} is not one of {', '.join(OPTIMIZER_NAMES)}")
    problems += release_input_problems(config)
    if config.lr_schedule not in LR_SCHEDULE_NAMES:
        problems.append(f"--lr_schedule {config.lr_schedule!r} is not one of {', '.join(LR_SCHEDULE_NAMES)}")
    watches_validation_loss = config.lr_schedule == "plateau" or config.early_stopping_patience > 0
    if watches_validation_loss and not (config.n_validation or config.validation_epochs):
        problems.append("--lr_schedule plateau and --early_stopping_patience need --n_validation or --validation_epochs")
    if min(config.n_summary, config.n_checkpoint) < 1 or config.n_validation < 0:
        problems.append("--n_summary and --n_checkpoint must be >= 1, --n_validation >= 0")
    if config.dataset_normalization not in ("standard", "none"):
        problems.append(f"--dataset_normalization must be standard or none (got {config.dataset_normalization!r})")
    if len(config.dataset_means) != len(config.dataset_stddevs):
        problems.append("--dataset_means and --dataset_stddevs need the same number of entries")
    if bool(config.val_multimodal_scan_paths) != bool(config.val_ground_truth_path):
        problems.append("give both --val_multimodal_scan_paths and --val_ground_truth_path, or neither")
    if problems:
        raise UserInputError("invalid training configuration: " + "; ".join(problems))


def release_input_problems(config: TrainConfig) -> list[str]:
    """What keeps ``--release_inputs`` from applying: an unknown preset, another model, slice count or a crop."""
    from spinseg.recipes.release_presets import PRESETS

    name = config.release_inputs
    if not name:
        return []
    if name not in PRESETS or name in ("spin", "unet"):
        return [f"--release_inputs {name!r} is not one of xnet, clcinet, dunet, kiunet"]
    preset = PRESETS[name]
    problems = []
    if config.model_name != preset.name:
        problems.append(f"--release_inputs {name} prepares inputs for --model {preset.name}, not {config.model_name}")
    if config.n_chunk != preset.n_slices:
        problems.append(f"--release_inputs {name} stacks {preset.n_slices} slice(s): give --n_chunk {preset.n_slices}")
    if config.crop_shape:
        problems.append(f"--release_inputs {name} uses the release's fixed window: leave --crop_shape empty")
    return problems


# ---------------------------------------------------------------------------------------------
# every numeric flag of every command is range-checked here, by name, in one table.


@dataclass(frozen=True)
class Bounds:
    """The values a numeric flag admits: ``low``/``high`` (None: unbounded), open or closed; always finite."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def admits(self, value) -> bool:
        """True when ``value`` (a number) lies within the bounds; NaN and Inf never do."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def describe(self) -> str:
        """``"must be >= 1"``, ``"must lie in (0, 1)"``..."""
        if self.low is not None and self.high is not None:
            return f"must lie in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"must be {'>' if self.open_low else '>='} {self.low:g}"
        return f"must be {'<' if self.open_high else '<='} {self.high:g}"


POSITIVE = Bounds(0, open_low=True)
NUMERIC_BOUNDS: dict[str, Bounds] = {
    # counts
    "n_batch": Bounds(1), "batch_size": Bounds(1), "val_batch_size": Bounds(1), "n_chunk": Bounds(1),
    "n_workers": Bounds(0), "n_thread": Bounds(0), "n_summary": Bounds(1), "n_checkpoint": Bounds(1),
    "n_validation": Bounds(0), "max_steps": Bounds(-1), "seed": Bounds(0),
    "plateau_patience": Bounds(1), "early_stopping_patience": Bounds(0), "validation_epochs": Bounds(0),
    "plateau_factor": Bounds(0, 1, open_low=True, open_high=True), "plateau_min_delta": Bounds(0),
    # schedules, in epochs (-1: forever)
    "learning_schedule": Bounds(1), "augmentation_schedule": Bounds(-1), "positive_class_sample_schedule": Bounds(-1),
    # weights, rates and sizes
    "learning_rates": POSITIVE, "w_positive_class": POSITIVE, "w_weight_decay": Bounds(0),
    "dataset_stddevs": POSITIVE, "dataset_means": Bounds(), "voxel_volume_ml": POSITIVE, "boundary_tolerance_mm": Bounds(0),
    "augmentation_rotate": Bounds(0, 180), "augmentation_noise_spread": Bounds(0),
    "augmentation_resize_and_pad": POSITIVE, "crop_shape": Bounds(8),
    # probabilities and thresholds
    "augmentation_probabilities": Bounds(0, 1), "positive_class_sample_rates": Bounds(0, 1),
    "threshold": Bounds(0, 1, open_low=True, open_high=True), "probe_timeout": POSITIVE,
}


def numeric_problems(values: dict) -> list[str]:
    """``"--name value: must be ..."`` for every entry of ``values`` (flag name -> number or list of
    numbers) that :data:`NUMERIC_BOUNDS` does not admit; names without bounds are not checked."""
    problems = []
    for name, value in values.items():
        bounds = NUMERIC_BOUNDS.get(name)
        if bounds is None or value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [item for item in items if not bounds.admits(item)]
        if bad:
            problems.append(f"--{name} {' '.join(f'{item:g}' if isinstance(item, float) else str(item) for item in bad)}: "
                            f"{bounds.describe()}")
    return problems


def check_numeric_flags(values: dict) -> None:
    """Raises one line listing every out-of-range number of ``values`` (see :func:`numeric_problems`)."""
    problems = numeric_problems(values)
    if problems:
        raise UserInputError("; ".join(problems))


def validate_evaluate_config(config: "EvaluateConfig") -> None:
    """Raises a one-line ``UserInputError`` for an evaluation setting no run can use, before any work."""
    problems = numeric_problems(dataclasses.asdict(config))
    if problems:
        raise UserInputError("invalid evaluation configuration: " + "; ".join(problems))
