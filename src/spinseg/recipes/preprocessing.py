"""What a checkpoint needs around it to be used: model, config, slices, normalisation, threshold.

Where each value comes from, first found wins:

1. a flag the user gave (``--model``, ``--n_chunk``, ``--dataset_means`` ...);
2. the checkpoint: ours carry a ``preprocessing`` record (written at save time) next to their
   ``model_name`` and ``model_config``; older ones of ours have their ``train_config`` to derive it
   from; ``.safetensors`` exports carry the same in their metadata;
3. the named recipe given with ``--recipe``, else the recipe of the model (``RECIPES``): this is
   how the authors' checkpoints, which record nothing, get theirs;
4. the defaults (SPiN, threshold 0.5).

Conflicts between a flag and the checkpoint (docs/cli.md): a different model name or number of
slices is an error (the weights cannot be used that way); a different normalisation, threshold or
model-config value is allowed (the flag wins) and printed as one warning line.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spinseg.data.transforms import Normalization
from spinseg.errors import fail, missing, warn
from spinseg.recipes.named import RECIPES, recipe

DEFAULT_THRESHOLD = 0.5
NORMALIZATION_KEYS = ("dataset_normalization", "dataset_means", "dataset_stddevs")


@dataclass
class Preprocessing:
    """Everything needed to turn a scan into the model's input and its output into a mask."""

    model_name: str
    model_config: dict
    n_chunk: int
    dataset_normalization: str
    dataset_means: list[float]
    dataset_stddevs: list[float]
    threshold: float = DEFAULT_THRESHOLD
    source: str = ""  # where the values came from, for reports: "checkpoint", "train_config", "recipe spin"

    def normalization(self) -> Normalization:
        """The intensity normalisation as the transform the data pipeline applies."""
        return Normalization(self.dataset_normalization, self.dataset_means, self.dataset_stddevs)

    def record(self) -> dict:
        """The ``preprocessing`` entry of a checkpoint (model name and config are stored beside it)."""
        return {key: value for key, value in asdict(self).items() if key not in ("model_name", "model_config", "source")}


@dataclass
class PreprocessingFlags:
    """What the user gave on the command line; None (or empty) = not given."""

    model_name: str | None = None
    model_config: dict = field(default_factory=dict)
    n_chunk: int | None = None
    dataset_normalization: str | None = None
    dataset_means: list[float] | None = None
    dataset_stddevs: list[float] | None = None
    threshold: float | None = None
    recipe: str = ""


def preprocessing_record(train_config) -> dict:
    """The ``preprocessing`` record of a model trained with ``train_config`` (a TrainConfig or its dict)."""
    values = train_config if isinstance(train_config, dict) else asdict(train_config)
    record = {"n_chunk": int(values["n_chunk"]), **{key: values[key] for key in NORMALIZATION_KEYS}, "threshold": DEFAULT_THRESHOLD}
    if values.get("release_inputs"):  # trained on a release preset's inputs: only --preset prepares them so
        record["release_inputs"] = values["release_inputs"]
    return record


def read_model_file(path: str | os.PathLike) -> dict:
    """The checkpoint at ``path`` as a dict: a ``.pth`` whole, a ``.safetensors`` file's metadata only."""
    from spinseg.models.checkpoint import CHECKPOINT_SUFFIXES, read_checkpoint

    path = Path(path)
    if path.suffix != ".safetensors":
        return read_checkpoint(path)
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise missing(path, "checkpoint", suffixes=CHECKPOINT_SUFFIXES)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return {key: json.loads(value) if key in ("model_config", "preprocessing") else value
                for key, value in metadata.items()}
    except (SafetensorError, OSError, ValueError) as error:
        raise fail(path, f"not a readable safetensors file ({str(error)[:120]})") from None


def stored_preprocessing(checkpoint: dict) -> tuple[dict, str]:
    """(values, source) the checkpoint itself records: its record, else derived from its train_config."""
    stored = {}
    if "model_name" in checkpoint:
        stored["model_name"] = checkpoint["model_name"]
    if isinstance(checkpoint.get("model_config"), dict):
        stored["model_config"] = checkpoint["model_config"]
    if isinstance(checkpoint.get("preprocessing"), dict):
        return {**stored, **checkpoint["preprocessing"]}, "checkpoint"
    if isinstance(checkpoint.get("train_config"), dict):
        return {**stored, **preprocessing_record(checkpoint["train_config"])}, "train_config"
    if is_number(stored.get("model_config", {}).get("input_channels")):
        # Ours without a record (e.g. an older best.pth): the network's input width is its slices.
        stored["n_chunk"] = int(stored["model_config"]["input_channels"])
    return stored, "checkpoint" if stored else ""


def is_number(value) -> bool:
    """True for an int or float that is not a bool (JSON numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What each recorded value must be: (test, words for the message). A damaged or hand-edited record
# otherwise ends in a ValueError traceback deep in the data pipeline.
RECORD_CHECKS = {
    "model_name": (lambda value: isinstance(value, str), "text"),
    "n_chunk": (lambda value: is_number(value) and float(value).is_integer() and value >= 1, "a whole number >= 1"),
    "dataset_normalization": (lambda value: value in ("standard", "none"), "standard or none"),
    "dataset_means": (lambda value: isinstance(value, list) and all(map(is_number, value)), "a list of numbers"),
    "dataset_stddevs": (lambda value: isinstance(value, list) and all(is_number(item) and item > 0 for item in value),
                        "a list of numbers > 0"),
    "threshold": (lambda value: is_number(value) and 0 < value < 1, "a number in (0, 1)"),
}


def check_record(path, stored: dict) -> None:
    """One line naming the checkpoint and the value for a recorded value no run can use."""
    for key, (test, words) in RECORD_CHECKS.items():
        if key in stored and not test(stored[key]):
            raise fail(path, f"its recorded {key} must be {words} (found {stored[key]!r:.80})")


def check_conflicts(path, flags: PreprocessingFlags, stored: dict, recipe_model: str | None) -> None:
    """Errors for a model or slice count the checkpoint cannot serve; one warning line for overrides."""
    saved_model = stored.get("model_name")
    for given, label in ((flags.model_name, "--model"), (recipe_model, f"--recipe {flags.recipe}")):
        if given and saved_model and given != saved_model:
            raise fail(path, f"checkpoint of model {saved_model!r}, not {label} {given!r}")
    if flags.n_chunk is not None and "n_chunk" in stored and flags.n_chunk != stored["n_chunk"]:
        raise fail(path, f"the model was trained on {stored['n_chunk']} stacked slices, not --n_chunk {flags.n_chunk}")
    overridden = [f"--{key} {getattr(flags, key)} (checkpoint: {stored[key]})" for key in (*NORMALIZATION_KEYS, "threshold")
                  if getattr(flags, key) is not None and key in stored and getattr(flags, key) != stored[key]]
    saved_config = stored.get("model_config", {})
    overridden += [f"--model_config {key}={value!r} (checkpoint: {saved_config[key]!r})"
                   for key, value in flags.model_config.items() if key in saved_config and saved_config[key] != value]
    if overridden:
        warn(f"{path}: flags override what the checkpoint records: {'; '.join(overridden)}")


def resolve_preprocessing(checkpoint: dict, flags: PreprocessingFlags, path="checkpoint") -> Preprocessing:
    """The preprocessing to use ``checkpoint`` with: flags, else the checkpoint, else the recipe."""
    from spinseg.models import model_class
    from spinseg.models.model_config import check_model_config, model_input_config

    named = recipe(flags.recipe) if flags.recipe else None
    stored, source = stored_preprocessing(checkpoint)
    check_record(path, stored)
    check_conflicts(path, flags, stored, named.model if named else None)
    if stored.get("release_inputs"):
        warn(f"{path}: trained on the release's {stored['release_inputs']} inputs (--release_inputs); these "
             f"slices are prepared otherwise: evaluate with --preset {stored['release_inputs']}")
    model_name = flags.model_name or stored.get("model_name") or (named.model if named else "spin")
    model_class(model_name)  # an unknown name: one line listing the known ones
    check_model_config(model_name, flags.model_config)  # unknown key, wrong type: one line naming --model_config's file
    if named is None or named.model != model_name:
        named = RECIPES.get(model_name)
    if not source and named:
        source = f"recipe {named.name}"
    values = {key: getattr(flags, key) if getattr(flags, key) is not None else stored.get(key)
              for key in ("n_chunk", *NORMALIZATION_KEYS, "threshold")}
    if named and any(values[key] is None for key in ("n_chunk", *NORMALIZATION_KEYS)):
        # Read only when needed: a GLaS/RITE recipe's normalisation reads its statistics.json.
        fallback = {"n_chunk": named.n_chunk, **named.normalization()}
        values = {key: fallback.get(key) if value is None else value for key, value in values.items()}
    if values["n_chunk"] is None:
        values["n_chunk"] = 1
    if values["threshold"] is None:
        values["threshold"] = DEFAULT_THRESHOLD
    if values["dataset_normalization"] is None:
        raise fail(path, f"no normalisation recorded and no recipe for model {model_name!r}: give --dataset_normalization")
    if values["dataset_means"] is None or values["dataset_stddevs"] is None:  # unused by "none"
        values["dataset_means"], values["dataset_stddevs"] = values["dataset_means"] or [0.0], values["dataset_stddevs"] or [1.0]
    model_config = {**stored.get("model_config", {}), **flags.model_config}
    if "model_config" not in stored:
        # The authors' checkpoints (and bare state dicts) do not say their input width: the slices do.
        model_config = model_input_config(model_name, values["n_chunk"], 1, {**(named.model_config if named else {}), **model_config})
    return Preprocessing(model_name, model_config, int(values["n_chunk"]), values["dataset_normalization"],
                         [float(v) for v in values["dataset_means"]], [float(v) for v in values["dataset_stddevs"]],
                         float(values["threshold"]), source)


def load_with_preprocessing(path: str | os.PathLike, flags: PreprocessingFlags):
    """Loads the model at ``path`` (eval mode) with the preprocessing it needs: (model, Preprocessing).

    A checkpoint trained on other slices than ``--n_chunk`` (or the recipe's) is one line naming both,
    whether or not it records its slices.
    """
    from spinseg.models import keras_weights
    from spinseg.models.checkpoint import CheckpointMismatch, load_model, load_safetensors, model_from_checkpoint

    if keras_weights.is_hdf5_file(path):
        # The authors' Keras files record no preprocessing (the recipe gives it) but fix the network,
        # its input width included: the slices are what the built model takes.
        preprocessing = resolve_preprocessing({}, flags, path)
        model = load_model(path, preprocessing.model_name, **flags.model_config)
        width = int(getattr(model, "in_channels", preprocessing.n_chunk))
        if flags.n_chunk is not None and flags.n_chunk != width:
            raise fail(path, f"the model was trained on {width} stacked slices, not --n_chunk {flags.n_chunk}")
        preprocessing.n_chunk = width
        preprocessing.model_config = dict(getattr(model, "config", {}))
        return model, preprocessing
    checkpoint = read_model_file(path)
    preprocessing = resolve_preprocessing(checkpoint, flags, path)
    try:
        if Path(path).suffix == ".safetensors":
            model = load_safetensors(path, preprocessing.model_name, **preprocessing.model_config)
        else:
            model = model_from_checkpoint(checkpoint, path, preprocessing.model_name, **preprocessing.model_config)
    except CheckpointMismatch as error:
        if error.trained_width is None or "input_channels" in flags.model_config:
            raise
        chosen = f"--n_chunk {flags.n_chunk}" if flags.n_chunk is not None else \
            f"the {preprocessing.n_chunk} of {preprocessing.source or 'the default'} (give --n_chunk {error.trained_width})"
        raise fail(path, f"the model was trained on {error.trained_width} stacked slices, not {chosen}") from None
    return model.eval(), preprocessing


def flags_of(config) -> PreprocessingFlags:
    """The preprocessing flags of an ``EvaluateConfig`` (None where not given)."""
    from spinseg.models.model_config import parse_model_config

    return PreprocessingFlags(
        config.model_name, parse_model_config(config.model_config), config.n_chunk, config.dataset_normalization,
        config.dataset_means, config.dataset_stddevs, config.threshold, config.recipe,
    )


def with_preprocessing(config, preprocessing: Preprocessing):
    """``config`` (an EvaluateConfig) with every preprocessing field filled from ``preprocessing``."""
    from dataclasses import replace

    return replace(
        config, model_name=preprocessing.model_name, model_config=json.dumps(preprocessing.model_config),
        n_chunk=preprocessing.n_chunk, dataset_normalization=preprocessing.dataset_normalization,
        dataset_means=preprocessing.dataset_means, dataset_stddevs=preprocessing.dataset_stddevs,
        threshold=preprocessing.threshold,
    )
