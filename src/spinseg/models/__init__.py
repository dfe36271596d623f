"""Networks: SPiN and the paper's baselines, built by name through :func:`build_model`."""
from .registry import available_models, build_model, model_class

__all__ = ["available_models", "build_model", "model_class"]
