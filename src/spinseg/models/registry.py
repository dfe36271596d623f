"""Build any network of the package by name: ``build_model("spin", **config)``.

Every built model is an ``nn.Module`` with ``in_channels`` (number of stacked slices times colour
channels it expects) whose ``forward(x)`` maps (B, in_channels, H, W) to logits (B, 1, H, W) for
any H, W. Models are imported lazily so that building one never imports the others.
"""
from __future__ import annotations

import importlib

from torch import nn

from ..errors import UserInputError

# name -> "module:class" inside spinseg.models. The class takes its config as keyword arguments.
MODEL_CLASSES = {
    "spin": "spin:SPiN",
    "unet": "unet:UNet",
    "dunet": "dunet:DUNet",
    "clcinet": "clcinet:CLCINet",
    "kiunet": "kiunet:KiUNet",
    "xnet": "xnet:XNet",
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(MODEL_CLASSES)


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; an unknown name raises a one-line ``UserInputError``."""
    if name not in MODEL_CLASSES:
        raise UserInputError(f"unknown model name {name!r}; choose one of: {', '.join(MODEL_CLASSES)}")
    module_name, class_name = MODEL_CLASSES[name].split(":")
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, class_name)


def build_model(name: str, **config) -> nn.Module:
    """Builds model ``name`` with ``config`` (keyword arguments with the release's names).

    Returns a module mapping (B, C, H, W) -> logits (B, 1, H, W). A bad config value raises
    ``UserInputError`` with the model name and the problem.
    """
    cls = model_class(name)
    try:
        model = cls(**config)
    except (TypeError, ValueError, RuntimeError) as error:  # RuntimeError: torch refusing a size
        raise UserInputError(f"model {name!r}: {(str(error).splitlines() or [type(error).__name__])[0][:200]}") from None
    model.model_name = name
    return model
