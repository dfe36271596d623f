"""Every named recipe of the project, in one place: what each training/evaluation run pins.

A recipe lists only what differs from ``TrainConfig``'s defaults (the paper's SPiN recipe on
ATLAS). ``RECIPES`` holds one recipe per model, trained like for like on ATLAS (where a baseline's
paper gives no setting for ATLAS, SPiN's is used); ``NAMED_RECIPES`` adds the data-set recipes
(synthetic ATLAS on a CPU, GLaS, RITE). The bash scripts under ``bash/`` are ``--recipe NAME``
plus paths; the authors' checkpoints (which record no preprocessing) get theirs from the recipe
of their model.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from spinseg.constants import ATLAS_MEAN, ATLAS_STD
from spinseg.errors import UserInputError, fail

# The release's h5 export for D-UNet, CLCI-Net and X-Net divides T1 intensities by 100.
DIVIDE_BY_100 = {"dataset_normalization": "standard", "dataset_means": [0.0], "dataset_stddevs": [100.0]}
ATLAS_STANDARD = {"dataset_normalization": "standard", "dataset_means": [ATLAS_MEAN], "dataset_stddevs": [ATLAS_STD]}
# The release's GLaS and RITE recipes: RGB input, 128x128 crops, epochs 100/200/300 (we: per-channel statistics).
RGB_CROPS = {
    "crop_shape": [128, 128], "learning_schedule": [100, 200, 300], "positive_class_sample_rates": [0.0],
    "positive_class_sample_schedule": [-1], "augmentation_schedule": [150, 300], "n_checkpoint": 500, "n_validation": 500,
}


@dataclass(frozen=True)
class ModelRecipe:
    """One named recipe: ``train`` overrides TrainConfig fields, ``runtime`` sets worker/device
    defaults of the command (kept apart so callers that choose their own runtime can use ``train``),
    ``evaluate`` overrides EvaluateConfig fields. ``statistics_file``: normalisation read from a
    setup script's statistics.json at run time (GLaS, RITE)."""

    name: str
    display_name: str
    n_chunk: int
    model_config: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    note: str = ""
    model_name: str = ""
    runtime: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    statistics_file: str = ""

    @property
    def model(self) -> str:
        """The registry name of the network (the recipe's name for the per-model recipes)."""
        return self.model_name or self.name

    def normalization(self) -> dict:
        """The dataset normalisation flags of this recipe (statistics_file: read now)."""
        if self.statistics_file:
            return statistics_normalization(self.statistics_file, self.name)
        return {key: self.train.get(key, ATLAS_STANDARD[key]) for key in ATLAS_STANDARD}


def statistics_normalization(path: str, recipe_name: str) -> dict:
    """Normalisation flags from a ``statistics.json`` of setup_dataset_warwick/rite (per-channel)."""
    from spinseg.data.images import read_statistics

    if not Path(path).is_file():
        raise fail(path, f"not found; recipe {recipe_name!r} reads its normalisation from it: run the data set's "
                         "setup script first, or give --dataset_statistics PATH (or --dataset_means and --dataset_stddevs)")
    statistics = read_statistics(path)
    try:
        return {"dataset_normalization": "standard", "dataset_means": [float(value) for value in statistics["means"]],
                "dataset_stddevs": [float(value) for value in statistics["stddevs"]]}
    except (KeyError, TypeError, ValueError):
        raise fail(path, "expected numeric lists 'means' and 'stddevs'") from None


RECIPES = {
    "spin": ModelRecipe("spin", "SPiN", 5, train=dict(ATLAS_STANDARD), runtime={"n_workers": 8},
                        note="the paper's recipe (Wong et al. 2021), ATLAS R1.2 on a GPU"),
    "unet": ModelRecipe(
        "unet", "U-Net", 1,
        train={**ATLAS_STANDARD, "w_weight_decay": 1e-7, "augmentation_resize_and_pad": [0.9, 1.0]},
        note="the release's U-Net recipe: 1 slice, weight decay 1e-7, crop-and-pad 0.9-1.0; "
        "published encoder 64-128-256-512-1024 (the release trained 64-...-512)",
    ),
    "dunet": ModelRecipe(
        "dunet", "D-UNet", 5, train=dict(DIVIDE_BY_100),
        note="5 centred slices like SPiN's (its paper and dunet_release: 4, i-2 .. i+1), T1 / 100 as the release's h5 export",
    ),
    "clcinet": ModelRecipe("clcinet", "CLCI-Net", 1, train=dict(DIVIDE_BY_100), note="1 slice, T1 / 100"),
    # Full-resolution branches: whole 197x233 slices at batch 8 need ~46 GiB to train and ~37 GiB to
    # validate at 16 (spinseg.experiments.memory); 128x128 crops and batch-4 validation fit a 24 GB GPU.
    "kiunet": ModelRecipe("kiunet", "KiU-Net", 1,
                          train={**ATLAS_STANDARD, "learning_rates": [1e-3, 1e-4, 5e-5], "crop_shape": [128, 128], "val_batch_size": 4},
                          evaluate={"batch_size": 4},
                          note="1 slice, Adam 1e-3 as its paper, then SPiN's schedule; 128x128 crops and "
                               "validation/evaluation batch 4 so that it fits a 24 GB GPU"),
    "xnet": ModelRecipe(
        "xnet", "X-Net", 1, train=dict(DIVIDE_BY_100),
        note="1 slice, T1 / 100 (its paper: each volume over its own maximum)",
    ),
}


def rgb_recipe(name: str, dataset: str, note: str) -> ModelRecipe:
    """SPiN on a 2-D RGB data set prepared by setup/setup_dataset_<dataset>.py (GLaS: "warwick", RITE: "rite")."""
    return ModelRecipe(
        name, "SPiN", 1, model_name="spin", model_config={"input_channels": 3},
        train={**RGB_CROPS, "checkpoint_path": f"trained_spin/{dataset}/spin_traintest"}, runtime={"n_workers": 8},
        statistics_file=f"data/{dataset}_spin/statistics.json", note=note,
    )


DATASET_RECIPES = {
    "spin_synthetic_cpu": ModelRecipe(
        "spin_synthetic_cpu", "SPiN", 5, model_name="spin",
        train={**ATLAS_STANDARD, "crop_shape": [96, 96], "learning_rates": [1e-3, 3e-4], "learning_schedule": [120, 200],
               "positive_class_sample_rates": [0.70], "augmentation_schedule": [160, 200], "n_summary": 50,
               "n_checkpoint": 200, "n_validation": 0, "checkpoint_path": "trained_spin/synthetic_atlas/spin_cpu", "seed": 1},
        runtime={"device": "cpu", "n_workers": 0}, evaluate={"device": "cpu"},
        note="SPiN (paper architecture) on the synthetic ATLAS in minutes on a CPU: 96x96 crops, 600 steps, "
        "learning rates 1e-3 then 3e-4, 70% lesion slices so that crops also show healthy tissue",
    ),
    "spin_glas": rgb_recipe("spin_glas", "warwick", "the release's GLaS (warwick) recipe: RGB, 1 slice, 128x128 crops, "
                            "epochs 100/200/300, augmentation 1.0 until epoch 150; normalised by the per-channel "
                            "statistics of the training images"),
    "spin_rite": rgb_recipe("spin_rite", "rite", "the release's RITE recipe: as spin_glas, on retinal vessels"),
}

# ---------------------------------------------------------------------------------------------
# Each baseline's own training recipe, as its release trained it (``--recipe xnet_release`` ...): the
# baseline's loss, optimiser, learning rate, batch size, input size and regularisation read from the
# release's training code (sources in ``note`` and in docs/release_recipes.md). Schedules are in this
# trainer's epochs, one pass over the training *volumes*; the release's Keras/KiU-Net epochs were one
# pass over every *slice*, 189 times as many samples, so E release epochs are 189·E epochs here.
SLICES_PER_VOLUME = 189  # one release epoch = 189 of this trainer's epochs

NO_AUGMENTATION = {"augmentation_probabilities": [0.0], "augmentation_schedule": [-1], "augmentation_noise_spread": 0.0}


# X-Net's and CLCI-Net's Keras callbacks (X-Net/main.py:40-41, CLCI-Net/main.py:46-47): ReduceLROnPlateau and
# EarlyStopping on val_loss at the end of every release epoch; its validation batches held 9 slices (main.py:49).
KERAS_PLATEAU = {"lr_schedule": "plateau", "plateau_factor": 0.2, "plateau_patience": 3, "plateau_min_delta": 1e-3,
                 "early_stopping_patience": 5, "validation_epochs": SLICES_PER_VOLUME, "val_batch_size": 9}


def release_epochs(epochs: int) -> list[int]:
    """A one-entry schedule ending after ``epochs`` release epochs, in this trainer's epochs."""
    return [epochs * SLICES_PER_VOLUME]


RELEASE_RECIPES = {
    "xnet_release": ModelRecipe(
        "xnet_release", model_name="xnet", display_name="X-Net (release recipe)", n_chunk=1,
        train={**DIVIDE_BY_100, **NO_AUGMENTATION, **KERAS_PLATEAU, "loss_func_segmentation": "bce_dice", "optimizer": "adam",
               "learning_rates": [1e-3], "learning_schedule": release_epochs(100), "n_batch": 8,
               "release_inputs": "xnet", "w_weight_decay": 2e-5,
               "checkpoint_path": "trained_xnet/atlas/xnet_release_traintest"},
        note="BCE + Dice, Adam 1e-3 reduced x0.2 after 3 release epochs without a lower validation loss, early stop "
        "after 5, batch 8, the fixed window [5:229, 2:194] of the transposed slice, T1/100, L2 1e-5 on kernels (main.py:19,35,40-41; loss.py:15-16; model.py:17)",
    ),
    "clcinet_release": ModelRecipe(
        "clcinet_release", model_name="clcinet", display_name="CLCI-Net (release recipe)", n_chunk=1,
        train={**DIVIDE_BY_100, **NO_AUGMENTATION, **KERAS_PLATEAU, "loss_func_segmentation": "soft_dice", "optimizer": "adam",
               "learning_rates": [1e-4], "learning_schedule": release_epochs(100), "n_batch": 8,
               "release_inputs": "clcinet", "checkpoint_path": "trained_clcinet/atlas/clcinet_release_traintest"},
        note="soft Dice, Adam 1e-4 on a plateau schedule as X-Net's, batch 8, the fixed window [5:229, 11:187], T1/100, no L2 "
        "(main.py:21,41,46-47; CLCI_Net.py:6-13; custom_layer.py:7)",
    ),
    "dunet_release": ModelRecipe(
        "dunet_release", model_name="dunet", display_name="D-UNet (release recipe)", n_chunk=4,
        train={**DIVIDE_BY_100, "release_inputs": "dunet", "loss_func_segmentation": "eml", "optimizer": "sgd", "learning_rates": [1e-5],
               "learning_schedule": release_epochs(150), "n_batch": 36, "augmentation_probabilities": [1.0],
               "augmentation_schedule": [-1], "augmentation_rotate": 20.0, "augmentation_flip_type": ["horizontal"],
               "augmentation_resize_and_pad": [0.8, 1.2], "augmentation_noise_spread": 0.0,
               "checkpoint_path": "trained_dunet/atlas/dunet_release_traintest"},
        note="focal + Dice 'EML', SGD 1e-5, batch 36, 150 epochs, rotation 20, zoom 0.2, horizontal flip "
        "(Stroke_segment.py:262-263,278,306-307,328; Statistics.py:95-108); 4 slices i-2 .. i+1, 192x192 uint8/Lanczos/min-max",
    ),
    "kiunet_release": ModelRecipe(
        "kiunet_release", model_name="kiunet", display_name="KiU-Net (release recipe)", n_chunk=1,
        train={**ATLAS_STANDARD, "loss_func_segmentation": "two_class_cross_entropy", "optimizer": "adam",
               "learning_rates": [1e-4], "learning_schedule": release_epochs(20), "n_batch": 4, "w_weight_decay": 1e-5,
               "release_inputs": "kiunet", **NO_AUGMENTATION,
               "checkpoint_path": "trained_kiunet/atlas/kiunet_release_traintest"},
        note="2-class cross-entropy, Adam 1e-4 with weight decay 1e-5, batch 4, 20 epochs, per-slice uint8 resized to "
        "128x128, no augmentation: the training set gets the flip-free transform and --aug is off "
        "(bash/KiU-Net/train.sh; train.py:70,137,173-176,199; metrics.py:26-37)",
    ),
}

NAMED_RECIPES = {**RECIPES, **DATASET_RECIPES, **RELEASE_RECIPES}


def recipe(name: str) -> ModelRecipe:
    """The recipe called ``name`` (a model's name for its like-for-like ATLAS recipe)."""
    if name not in NAMED_RECIPES:
        raise UserInputError(f"--recipe: no recipe {name!r}; known: {', '.join(NAMED_RECIPES)}")
    return NAMED_RECIPES[name]


def train_defaults(name: str, statistics_path: str = "", read_statistics: bool = True) -> dict:
    """``python -m spinseg.train`` flag defaults for ``--recipe name`` (explicit flags still win).

    ``statistics_path`` replaces the recipe's statistics file (GLaS, RITE); ``read_statistics=False``
    leaves it unread (the means and stddevs were given as flags).
    """
    model_recipe = recipe(name)
    defaults = {
        "model_name": model_recipe.model,
        "n_chunk": model_recipe.n_chunk,
        "model_config": json.dumps(model_recipe.model_config) if model_recipe.model_config else "",
        "checkpoint_path": f"trained_{model_recipe.model}/atlas/{model_recipe.name}_traintest",
        **model_recipe.train,
        **model_recipe.runtime,
    }
    if read_statistics and (statistics_path or model_recipe.statistics_file):
        defaults.update(statistics_normalization(statistics_path or model_recipe.statistics_file, name))
    return defaults


def evaluate_defaults(name: str) -> dict:
    """``python -m spinseg.evaluate`` flag defaults for ``--recipe name``: labels and runtime only;
    the preprocessing comes from the checkpoint, or from this recipe where the checkpoint has none."""
    model_recipe = recipe(name)
    return {"method_name": model_recipe.display_name, "output_path": f"outputs/{model_recipe.model}/atlas_traintest",
            **model_recipe.evaluate}


def add_recipe_arguments(parser: argparse.ArgumentParser, statistics: bool = False) -> None:
    """``--recipe NAME`` (and, for training, ``--dataset_statistics PATH``)."""
    parser.add_argument("--recipe", default="", help=f"start from this named recipe ({', '.join(NAMED_RECIPES)}); "
                        "explicit flags win (default: none, i.e. the defaults shown)")
    if statistics:
        parser.add_argument("--dataset_statistics", default="",
                            help="statistics.json whose per-channel means/stddevs normalise the inputs "
                            "(default: the recipe's, e.g. data/warwick_spin/statistics.json for spin_glas)")


def parse_with_recipe(parser: argparse.ArgumentParser, argv: list[str] | None, defaults_for) -> argparse.Namespace:
    """Parses ``argv``; with ``--recipe NAME`` the recipe's values become the defaults first.

    ``defaults_for(name, known_namespace)`` gives the defaults. With ``--dataset_statistics`` and
    no recipe, the statistics file alone sets the normalisation defaults.
    """
    known, _ = parser.parse_known_args(argv)
    statistics = getattr(known, "dataset_statistics", "")
    if known.recipe:
        parser.set_defaults(**defaults_for(known.recipe, known))
    elif statistics:
        parser.set_defaults(**statistics_normalization(statistics, "(none)"))
    return parser.parse_args(argv)
