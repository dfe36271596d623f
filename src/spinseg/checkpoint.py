"""Saving and safely loading checkpoints: ours, the release's, and ``.safetensors``.

Every ``.pth`` is read with ``torch.load(..., weights_only=True)``: a file that would need to run
code to unpickle is refused, never executed. Our training checkpoints are written atomically.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import UserInputError, fail
from .fileio import atomic_path
from .models import build_model

CHECKPOINT_FORMAT = "spinseg-checkpoint-v1"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Reads a ``.pth``/``.pt`` checkpoint safely (tensors, dicts, lists and numbers only).

    A missing, truncated or code-carrying file raises a one-line ``UserInputError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise fail(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise fail(path, f"refused: the checkpoint holds objects that safe loading does not allow ({reason[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise fail(path, f"not a readable PyTorch checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise fail(path, f"expected a dict of state dicts, found {type(checkpoint).__name__}")
    return checkpoint


def is_release_checkpoint(checkpoint: dict) -> bool:
    """True for the original release's format: ``<subnetwork>_state_dict`` entries (and ``train_step``)."""
    return "format" not in checkpoint and any(key.endswith("_state_dict") for key in checkpoint)


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], limit: int = 6) -> str:
    """One line listing missing, unexpected and wrongly shaped keys between two state dicts."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{key} {tuple(found[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in found and tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            shown = ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
            parts.append(f"{label} {len(items)}: {shown}")
    return "; ".join(parts)


def load_state_dict_checked(module: nn.Module, state_dict: dict, path, what: str) -> None:
    """Loads ``state_dict`` strictly, turning a mismatch into a one-line error listing the keys."""
    expected = module.state_dict()
    mismatch = describe_mismatch(expected, state_dict)
    if mismatch:
        raise fail(path, f"checkpoint does not fit {what}: {mismatch}")
    module.load_state_dict(state_dict, strict=True)


def model_from_checkpoint(checkpoint: dict, path, name: str, **config) -> nn.Module:
    """Builds model ``name`` and loads ``checkpoint`` (ours or the release's) into it."""
    if is_release_checkpoint(checkpoint):
        model = build_model(name, **config)
        if not hasattr(model, "load_release_state_dicts"):
            raise fail(path, f"release-format checkpoint, but model {name!r} has no release format")
        for key, sub_state in model.release_state_dicts().items():
            if key not in checkpoint:
                raise fail(path, f"checkpoint of another model: no {key} for model {name!r} (has {', '.join(sorted(checkpoint))[:200]})")
            load_state_dict_checked(getattr(model, key[: -len("_state_dict")]), checkpoint[key], path, f"model {name!r} ({key})")
        return model
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise fail(path, "unknown checkpoint format (neither spinseg's nor the original release's)")
    saved_name = checkpoint.get("model_name")
    if saved_name != name:
        raise fail(path, f"checkpoint of model {saved_name!r}, not {name!r}")
    model = build_model(name, **{**checkpoint.get("model_config", {}), **config})
    load_state_dict_checked(model, checkpoint["model_state_dict"], path, f"model {name!r}")
    return model


def load_model(path: str | os.PathLike, name: str, **config) -> nn.Module:
    """Loads a model of architecture ``name`` from ``path`` and returns it in eval mode.

    Accepts our ``.pth`` checkpoints (config inside; ``config`` overrides it), the authors'
    release format (``config`` must describe the network, e.g. the paper's defaults) and
    ``.safetensors`` files written by :func:`export_safetensors`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        model = load_safetensors(path, name, **config)
    else:
        model = model_from_checkpoint(read_checkpoint(path), path, name, **config)
    return model.eval()


def model_config(model: nn.Module) -> dict:
    """The JSON-serialisable constructor config of a built model."""
    config = getattr(model, "config", {})
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> None:
    """Writes our checkpoint atomically: model name, config and weights, plus ``extra`` entries.

    ``extra`` holds training state (``optimizer_state_dict``, ``train_state``, ``rng_state``...);
    it must contain only tensors, dicts, lists, strings and numbers so it reloads safely.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model_name": getattr(model, "model_name", type(model).__name__.lower()),
        "model_config": model_config(model),
        "model_state_dict": model.state_dict(),
        **extra,
    }
    with atomic_path(path, suffix=".pth") as temporary:
        torch.save(checkpoint, temporary)


def export_safetensors(checkpoint_path: str | os.PathLike, output_path: str | os.PathLike) -> Path:
    """Converts one of our checkpoints to ``.safetensors`` with name and config in its metadata."""
    from safetensors.torch import save_file

    checkpoint = read_checkpoint(checkpoint_path)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise fail(checkpoint_path, "only spinseg checkpoints can be exported (load release files with load_model)")
    tensors = {key: value.contiguous() for key, value in checkpoint["model_state_dict"].items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "model_name": checkpoint["model_name"],
        "model_config": json.dumps(checkpoint["model_config"]),
    }
    output_path = Path(output_path)
    with atomic_path(output_path, suffix=".safetensors") as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return output_path


def load_safetensors(path: str | os.PathLike, name: str, **config) -> nn.Module:
    """Builds model ``name`` from a ``.safetensors`` file written by :func:`export_safetensors`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise fail(path, "checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise fail(path, f"not a readable safetensors file ({str(error)[:120]})") from None
    saved_name = metadata.get("model_name", name)
    if saved_name != name:
        raise fail(path, f"checkpoint of model {saved_name!r}, not {name!r}")
    saved_config = json.loads(metadata.get("model_config", "{}"))
    model = build_model(name, **{**saved_config, **config})
    load_state_dict_checked(model, state_dict, path, f"model {name!r}")
    return model
