"""Every named recipe and the typed configuration dataclasses, in one place."""
from spinseg.recipes.named import RECIPES, ModelRecipe, evaluate_defaults, parse_with_recipe, recipe, train_defaults

__all__ = ["RECIPES", "ModelRecipe", "evaluate_defaults", "parse_with_recipe", "recipe", "train_defaults"]
