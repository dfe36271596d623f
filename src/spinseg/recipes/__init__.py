"""Every named recipe, the typed configuration dataclasses and the preprocessing a checkpoint carries."""
from spinseg.recipes.named import (
    NAMED_RECIPES,
    RECIPES,
    ModelRecipe,
    evaluate_defaults,
    parse_with_recipe,
    recipe,
    train_defaults,
)

__all__ = ["NAMED_RECIPES", "RECIPES", "ModelRecipe", "evaluate_defaults", "parse_with_recipe", "recipe", "train_defaults"]
