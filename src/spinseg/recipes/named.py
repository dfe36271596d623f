"""Per-model recipes: what differs between SPiN and each baseline when trained by this pipeline.

Everything not listed here is SPiN's recipe (``TrainConfig`` defaults). Where a baseline's paper
gives no setting for ATLAS, SPiN's is used so that the comparison is like for like.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from spinseg.constants import ATLAS_MEAN, ATLAS_STD

# The release's h5 export for D-UNet, CLCI-Net and X-Net divides T1 intensities by 100.
DIVIDE_BY_100 = {"dataset_normalization": "standard", "dataset_means": [0.0], "dataset_stddevs": [100.0]}
ATLAS_STANDARD = {"dataset_normalization": "standard", "dataset_means": [ATLAS_MEAN], "dataset_stddevs": [ATLAS_STD]}


@dataclass
class ModelRecipe:
    """Training/evaluation settings of one model: ``train`` overrides TrainConfig fields."""

    name: str
    display_name: str
    n_chunk: int
    model_config: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    note: str = ""

    def normalization(self) -> dict:
        """The dataset normalisation flags of this recipe."""
        return {key: self.train.get(key, ATLAS_STANDARD[key]) for key in ATLAS_STANDARD}


RECIPES = {
    "spin": ModelRecipe("spin", "SPiN", 5, train=dict(ATLAS_STANDARD), note="the paper's recipe"),
    "unet": ModelRecipe(
        "unet", "U-Net", 1,
        train={**ATLAS_STANDARD, "w_weight_decay": 1e-7, "augmentation_resize_and_pad": [0.9, 1.0]},
        note="the release's U-Net recipe: 1 slice, weight decay 1e-7, crop-and-pad 0.9-1.0; "
        "published encoder 64-128-256-512-1024 (the release trained 64-...-512)",
    ),
    "dunet": ModelRecipe(
        "dunet", "D-UNet", 5, train=dict(DIVIDE_BY_100),
        note="5 slices (its paper: 4; our slice stacks are centred, so odd), T1 / 100 as the release's h5 export",
    ),
    "clcinet": ModelRecipe("clcinet", "CLCI-Net", 1, train=dict(DIVIDE_BY_100), note="1 slice, T1 / 100"),
    # Full-resolution branches: whole 197x233 slices at batch 8 need ~46 GiB to train and ~37 GiB to
    # validate at 16 (spinseg.experiments.memory); 128x128 crops and batch-4 validation fit a 24 GB GPU.
    "kiunet": ModelRecipe("kiunet", "KiU-Net", 1,
                          train={**ATLAS_STANDARD, "learning_rates": [1e-3, 1e-4, 5e-5], "crop_shape": [128, 128], "val_batch_size": 4},
                          note="1 slice, Adam 1e-3 as its paper, then SPiN's schedule; 128x128 crops and "
                               "validation batch 4 so that it fits a 24 GB GPU"),
    "xnet": ModelRecipe(
        "xnet", "X-Net", 1, train=dict(DIVIDE_BY_100),
        note="1 slice, T1 / 100 (its paper: each volume over its own maximum)",
    ),
}


def recipe(name: str) -> ModelRecipe:
    """The recipe of model ``name`` (a registry name)."""
    from spinseg.errors import UserInputError

    if name not in RECIPES:
        raise UserInputError(f"no recipe for model {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def train_defaults(name: str) -> dict:
    """``python -m spinseg.train`` flag defaults for ``--recipe name`` (explicit flags still win)."""
    import json

    model_recipe = recipe(name)
    return {
        "model_name": model_recipe.name,
        "n_chunk": model_recipe.n_chunk,
        "model_config": json.dumps(model_recipe.model_config) if model_recipe.model_config else "",
        "checkpoint_path": f"trained_{model_recipe.name}/atlas/{model_recipe.name}_traintest",
        **model_recipe.train,
    }


def evaluate_defaults(name: str) -> dict:
    """``python -m spinseg.evaluate`` flag defaults for ``--recipe name``."""
    defaults = train_defaults(name)
    keys = ("model_name", "n_chunk", "model_config", "dataset_normalization", "dataset_means", "dataset_stddevs")
    # A recipe that lowers its validation batch for GPU memory evaluates at that batch too.
    batch = {"batch_size": defaults["val_batch_size"]} if "val_batch_size" in defaults else {}
    return {key: defaults[key] for key in keys} | batch | {"method_name": recipe(name).display_name,
                                                   "output_path": f"outputs/{name}/atlas_traintest"}


def parse_with_recipe(parser: argparse.ArgumentParser, argv: list[str] | None, defaults_for) -> argparse.Namespace:
    """Parses ``argv``; with ``--recipe NAME`` the recipe's values become the defaults first."""
    known, _ = parser.parse_known_args(argv)
    if known.recipe:
        parser.set_defaults(**defaults_for(known.recipe))
    return parser.parse_args(argv)
