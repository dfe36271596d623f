"""Saving and safely loading checkpoints: ours, the release's, and ``.safetensors``.

Every ``.pth`` is read with ``torch.load(..., weights_only=True)``: a file that would need to run
code to unpickle is refused, never executed. Our training checkpoints are written atomically.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from spinseg.errors import fail
from spinseg.io.files import atomic_path
from spinseg.models import build_model, keras_weights, kiunet

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
        raise fail(
            path,
            f"refused: it holds more than weights ({unsafe_load_reason(error)}); loading it could run code, "
            "and spinseg only loads weights (torch.load weights_only=True)",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise fail(path, f"not a readable PyTorch checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise fail(path, f"expected a dict of state dicts, found {type(checkpoint).__name__}")
    return checkpoint


def unsafe_load_reason(error: Exception) -> str:
    """The useful part of torch's multi-paragraph weights-only refusal, e.g. "GLOBAL posix.system".

    torch's message starts with generic advice (including re-running with ``weights_only=False``,
    which we never do); the line naming the refused global is the one a user can act on.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch highlights part of it with ANSI codes
    # torch words it differently by case ("Unsupported global: GLOBAL getattr ...", "Trying to load
    # unsupported GLOBAL posix.system whose module posix is blocked"); the global's name is the constant.
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"it would call {match.group(1)}"
    lines = [line.strip() for line in text.splitlines() if "unsupported" in line.lower() or "WeightsUnpickler" in line]
    return lines[0][:160] if lines else "objects other than tensors, dicts, lists and numbers"


def is_state_dict(checkpoint: dict) -> bool:
    """True for a bare ``model.state_dict()`` saved on its own (every value a tensor)."""
    return bool(checkpoint) and all(isinstance(value, torch.Tensor) for value in checkpoint.values())


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
    if is_state_dict(checkpoint) and name == "kiunet" and kiunet.is_release_state_dict(checkpoint):
        # The release's KiU-Net (biased convolutions, 2-channel output): its exact variant.
        model = build_model(name, **{**config, "release_exact": True})
        load_state_dict_checked(model, kiunet.release_state_dict_to_port(checkpoint), path, "the release's KiU-Net")
        return model
    if is_state_dict(checkpoint):
        # A bare state dict has no name or config: build from ``config`` and let the key check speak.
        model = build_model(name, **config)
        load_state_dict_checked(model, checkpoint, path, f"model {name!r}")
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
    release format (``config`` must describe the network, e.g. the paper's defaults),
    ``.safetensors`` files written by :func:`export_safetensors` and the authors' Keras
    ``.h5`` / ``.hdf5`` files of X-Net, CLCI-Net and D-UNet (the model is built as the file describes).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        model = load_safetensors(path, name, **config)
    elif keras_weights.is_hdf5_file(path):
        # The authors' Keras 2.2 weights of X-Net, CLCI-Net and D-UNet (.h5 / .hdf5).
        model = keras_weights.load_keras_model(path, name, **config)
    else:
        model = model_from_checkpoint(read_checkpoint(path), path, name, **config)
    return model.eval()


def model_config(model: nn.Module) -> dict:
    """The JSON-serialisable constructor config of a built model (``RemembersConfig.config``)."""
    return dict(getattr(model, "config", {}))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> None:
    """Writes our checkpoint atomically: model name, config and weights, plus ``extra`` entries.

    A model that carries a ``preprocessing`` dict (the trainer attaches one: slices, normalisation,
    threshold; see ``spinseg.recipes.preprocessing``) has it saved too, so evaluate and predict
    need no flags. ``extra`` holds training state (``optimizer_state_dict``, ``train_state``,
    ``rng_state``...); it must contain only tensors, dicts, lists, strings and numbers so it reloads safely.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    preprocessing = getattr(model, "preprocessing", None)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model_name": getattr(model, "model_name", type(model).__name__.lower()),
        "model_config": model_config(model),
        **({"preprocessing": dict(preprocessing)} if preprocessing else {}),
        "model_state_dict": model.state_dict(),
        **extra,
    }
    write_atomically(path, lambda temporary: torch.save(checkpoint, temporary), suffix=".pth")


def is_write_failure(error: BaseException) -> bool:
    """True for errors of writing a file (full disk, read-only folder, quota), not for bugs.

    torch.save reports a failed write from its C++ zip writer as a RuntimeError.
    """
    if isinstance(error, OSError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("PytorchStreamWriter" in message or "file write failed" in message)


def fsync_directory(directory: Path) -> None:
    """Makes a rename inside ``directory`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems (and Windows) refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(descriptor)


def write_atomically(path: str | os.PathLike, write, suffix: str) -> None:
    """Calls ``write(temporary)`` on a temporary file beside ``path``, then renames it onto ``path``.

    ``fileio.atomic_path`` fsyncs the file and renames it, removing the temporary on failure; the
    folder is fsynced afterwards so the new name survives a power cut. A failed write (e.g. a full
    disk) leaves any previous ``path`` untouched and raises a one-line ``UserInputError`` naming the folder.
    """
    path = Path(path)
    try:
        with atomic_path(path, suffix=suffix) as temporary:
            write(temporary)
    except Exception as error:
        if not is_write_failure(error):
            raise
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            reason = "no space left on device"
        else:
            reason = (getattr(error, "strerror", None) or str(error).strip().splitlines()[0] or type(error).__name__)[:160]
        previous = " (the previous file is unchanged)" if path.exists() else ""
        raise fail(path.parent, f"could not write {path.name}: {reason}{previous}") from None
    fsync_directory(path.parent)


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
        **({"preprocessing": json.dumps(checkpoint["preprocessing"])} if "preprocessing" in checkpoint else {}),
    }
    output_path = Path(output_path)
    write_atomically(output_path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata), ".safetensors")
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
