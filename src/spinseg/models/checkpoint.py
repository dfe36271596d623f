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
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from spinseg.errors import UserInputError, fail, missing
from spinseg.io.budgets import check_checkpoint_file
from spinseg.io.files import atomic_path
from spinseg.models import build_model, keras_weights, kiunet
from spinseg.models.model_config import check_model_config

CHECKPOINT_FORMAT = "spinseg-checkpoint-v1"
# The files a checkpoint flag takes: ours and the release's .pth, exports, the authors' Keras weights.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".h5", ".hdf5")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Reads a ``.pth``/``.pt`` checkpoint safely (tensors, dicts, lists and numbers only).

    A missing, truncated or code-carrying file raises a one-line ``UserInputError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise missing(path, "checkpoint", suffixes=CHECKPOINT_SUFFIXES)
    check_checkpoint_file(path)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles on stderr; the error line says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused_global = unsafe_global(error) or disallowed_global_in_file(path)
        if refused_global is None:
            # Not a pickle with forbidden globals: a text stub, random bytes, a safetensors file...
            raise fail(path, f"not a readable PyTorch checkpoint ({not_a_checkpoint_reason(path, error)})") from None
        raise fail(
            path,
            f"refused: it holds more than weights (it would call {refused_global}); loading it could run code, "
            "and spinseg only loads weights (torch.load weights_only=True)",
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure of torch's parser is the file's fault
        refused_global = disallowed_global_in_file(path)
        if refused_global is not None:
            raise fail(path, f"refused: it holds more than weights (it would call {refused_global}); loading it could "
                             "run code, and spinseg only loads weights (torch.load weights_only=True)") from None
        raise fail(path, f"not a readable PyTorch checkpoint ({not_a_checkpoint_reason(path, error)})") from None
    if not isinstance(checkpoint, dict):
        raise fail(path, f"expected a dict of state dicts, found {type(checkpoint).__name__}")
    return checkpoint


def first_line(error: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message, ANSI colour codes removed, at most ``limit`` characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return (text.splitlines() or [type(error).__name__])[0][:limit]


def unsafe_global(error: Exception) -> str | None:
    """The global torch's weights-only unpickler refused, e.g. ``"posix.system"``; None when the file was
    not refused for a global (then it is no pickle with code in it, just not a checkpoint).

    torch's message starts with generic advice (including re-running with ``weights_only=False``,
    which we never do); torch words it differently by case ("Unsupported global: GLOBAL getattr ...",
    "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"); the global's
    name after "GLOBAL" is the constant.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch highlights part of it with ANSI codes
    match = re.search(r"GLOBAL ([\w.]+)", text)
    return match.group(1) if match else None


def pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every global the pickles in ``data`` (one or several, concatenated) would
    import, read with ``pickletools`` (nothing is executed); stops quietly at damaged data."""
    import io
    import pickletools

    found, stream = [], io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        try:
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    found.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(argument, str):
                    strings.append(argument)
        except Exception:  # noqa: BLE001 - damaged data ends the scan; what was found stands
            break
    return found


def disallowed_global_in_file(path: Path) -> str | None:
    """The first global a pickle in ``path`` (raw, or ``*.pkl`` inside a torch zip) names outside torch's
    weights-only allow-list; None when there is none (then the file is damaged, not dangerous)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):
        allowed = set()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                blobs = [archive.read(name) for name in archive.namelist() if name.endswith(".pkl")]
        else:
            blobs = [path.read_bytes()]
    except Exception:  # noqa: BLE001 - unreadable: nothing to name
        return None
    for blob in blobs:
        for name in pickle_globals(blob):
            if name not in allowed and not name.startswith("torch."):
                return name
    return None


def not_a_checkpoint_reason(path: Path, error: Exception) -> str:
    """Why a file torch could not unpickle is no checkpoint: names a safetensors file under a ``.pth`` name."""
    with open(path, "rb") as stream:
        head = stream.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "it is a safetensors file; give it a .safetensors name"
    if not head:
        return "empty file"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(name.endswith("data.pkl") for name in names):  # torch's zips hold <name>/data.pkl
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            return (f"a zip archive of {shown}, not a saved model: unpack it, or install the authors' release "
                    "with python -m spinseg.download --zip_path")
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        return "truncated or damaged zip"
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        return "neither a PyTorch zip nor a pickle file"
    if isinstance(error, pickle.UnpicklingError):
        return "damaged pickle data"  # torch's own message opens with generic advice, not the cause
    return f"damaged: {type(error).__name__}: {first_line(error, 80)}"


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
    check_finite_weights(state_dict, path)
    module.load_state_dict(state_dict, strict=True)


def check_finite_weights(state_dict: dict, path) -> None:
    """one NaN/Inf weight makes every prediction empty with exit 0; refuse it when loaded."""
    bad = {key: int((~torch.isfinite(value)).sum()) for key, value in state_dict.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()}
    if bad:
        shown = ", ".join(f"{key} ({count})" for key, count in list(bad.items())[:3])
        raise fail(path, f"{sum(bad.values())} weight(s) are NaN or Inf, in {shown}{' ...' if len(bad) > 3 else ''}; "
                         "the checkpoint is damaged or its training diverged")


def model_from_checkpoint(checkpoint: dict, path, name: str, **config) -> nn.Module:
    """Builds model ``name`` and loads ``checkpoint`` (ours or the release's) into it."""
    if is_release_checkpoint(checkpoint):
        model = build_model(name, **config)
        if not hasattr(model, "load_release_state_dicts"):
            raise fail(path, f"release-format checkpoint, but model {name!r} has no release format")
        check_fit(model, release_weights(checkpoint), path, name, config, release=True)
        for key in model.release_state_dicts():
            load_state_dict_checked(getattr(model, key[: -len("_state_dict")]), checkpoint[key], path, f"model {name!r} ({key})")
        return model
    if is_state_dict(checkpoint) and name == "kiunet" and kiunet.is_release_state_dict(checkpoint):
        # The release's KiU-Net (biased convolutions, 2-channel output): its exact variant.
        config = {**config, "release_exact": True}
        checkpoint, what = kiunet.release_state_dict_to_port(checkpoint), "the release's KiU-Net"
    elif is_state_dict(checkpoint):
        what = f"model {name!r}"  # a bare state dict has no name or config: build from ``config``
    elif checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise fail(path, "unknown checkpoint format (neither spinseg's nor the original release's)")
    else:
        saved_name = checkpoint.get("model_name")
        if saved_name != name:
            raise fail(path, f"checkpoint of model {saved_name!r}, not {name!r}")
        recorded = checkpoint.get("model_config", {})
        if not isinstance(recorded, dict):
            raise fail(path, f"its recorded model_config is not a dict (found {type(recorded).__name__})")
        check_model_config(name, recorded, f"{path}: its recorded model_config")
        config, what = {**recorded, **config}, f"model {name!r}"
        checkpoint = our_state_dict(checkpoint, path)
    model = build_model(name, **config)
    check_fit(model, checkpoint, path, name, config, what=what)
    load_state_dict_checked(model, checkpoint, path, what)
    return model


def our_state_dict(checkpoint: dict, path) -> dict:
    """The ``model_state_dict`` of one of our checkpoints; one line when it is missing or holds other than tensors."""
    state = checkpoint.get("model_state_dict")
    if not (isinstance(state, dict) and is_state_dict(state)):
        raise fail(path, f"its model_state_dict is missing or not a dict of tensors (found {type(state).__name__})")
    return state


class CheckpointMismatch(UserInputError):
    """Weights that do not fit the model built for them. ``trained_width`` and ``built_width`` (input
    channels: stacked slices x channels per slice) are set when the input width is all that differs,
    so a caller can name the flag that chose the built width (``--n_chunk``)."""

    def __init__(self, message: str, trained_width: int | None = None, built_width: int | None = None):
        super().__init__(message)
        self.trained_width, self.built_width = trained_width, built_width


def release_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The release's ``<subnetwork>_state_dict`` entries as one flat dict ``"<entry>/<key>"``."""
    return {f"{entry}/{key}": value for entry, state in checkpoint.items()
            if entry.endswith("_state_dict") and isinstance(state, dict) for key, value in state.items()}


def expected_weights(model: nn.Module, release: bool) -> dict[str, torch.Tensor]:
    """The weights ``model`` holds, keyed as a checkpoint of that kind (release or ours) keys them."""
    if not release:
        return model.state_dict()
    return release_weights(model.release_state_dicts()) if hasattr(model, "release_state_dicts") else {}


def check_fit(model: nn.Module, found: dict, path, name: str, config: dict, release: bool = False, what: str = "") -> None:
    """Raises one line when the weights ``found`` do not fit ``model`` (built as ``name`` from ``config``,
    described as ``what``), saying why in the user's words: another input width (slices), another model,
    other layer widths."""
    mismatch = describe_mismatch(expected_weights(model, release), found, limit=2)
    if not mismatch:
        return
    built_width = getattr(model, "in_channels", None)
    trained_width = trained_input_width(found, name, config, release, expected_weights(model, release))
    if trained_width is not None and built_width is not None:
        raise CheckpointMismatch(f"{path}: checkpoint does not fit model {name!r}: its weights take {trained_width} input "
                                 f"channels (stacked slices), the model was built for {built_width}", trained_width, built_width)
    other = closest_model(found, name, release)
    if other is not None:
        raise fail(path, f"checkpoint does not fit model {name!r}: its weights are those of a {other!r} network (--model {other})")
    raise fail(path, f"checkpoint does not fit {what or f'model {name!r}'} as configured ({mismatch}); give the model config it was "
                     "trained with (--model_config)")


def meta_model(name: str, config: dict) -> nn.Module | None:
    """Model ``name`` built from ``config`` without memory (on torch's meta device); None when it cannot be."""
    try:
        with torch.device("meta"):
            return build_model(name, **config)
    except Exception:  # noqa: BLE001 - a config that does not build is simply not the answer
        return None


def fits(model: nn.Module | None, found: dict, release: bool) -> bool:
    """True when ``found`` has exactly ``model``'s keys and shapes."""
    return model is not None and not describe_mismatch(expected_weights(model, release), found)


def trained_input_width(found: dict, name: str, config: dict, release: bool, expected: dict) -> int | None:
    """The input width the weights ``found`` were trained with, when building ``name`` with that width
    (and ``config`` otherwise) makes them fit; None when another width does not explain the mismatch."""
    candidates = sorted({size for key, value in found.items()
                         if key in expected and isinstance(value, torch.Tensor) and value.dim() == expected[key].dim()
                         for size, wanted in zip(value.shape, expected[key].shape) if size != wanted})
    width_key = "input_channels_segmentation" if "input_channels_segmentation" in config else "input_channels"
    for width in candidates[:8]:
        if fits(meta_model(name, {**config, width_key: width}), found, release):
            return width
    return None


def closest_model(found: dict, name: str, release: bool) -> str | None:
    """The registered model other than ``name`` whose (default) weight names the keys of ``found`` match
    best, when they match them better than ``name``'s do and share at least half; else None."""
    from spinseg.models import available_models

    def overlap(model: nn.Module | None) -> float:
        keys = set(expected_weights(model, release)) if model is not None else set()
        return len(keys & set(found)) / max(1, len(keys | set(found)))

    scores = {candidate: overlap(meta_model(candidate, {})) for candidate in available_models()}
    best = max((candidate for candidate in scores if candidate != name), key=scores.get)
    return best if scores[best] >= 0.5 and scores[best] > scores[name] else None


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
    tensors = {key: value.contiguous() for key, value in our_state_dict(checkpoint, checkpoint_path).items()}
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
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise missing(path, "checkpoint", suffixes=CHECKPOINT_SUFFIXES)
    check_checkpoint_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - SafetensorError, but also OSError, ValueError...
        raise fail(path, f"not a readable safetensors file ({first_line(error)})") from None
    saved_name = metadata.get("model_name", name)
    if saved_name != name:
        raise fail(path, f"checkpoint of model {saved_name!r}, not {name!r}")
    try:
        saved_config = json.loads(metadata.get("model_config", "{}"))
    except json.JSONDecodeError as error:
        raise fail(path, f"metadata model_config is not JSON ({error})") from None
    if not isinstance(saved_config, dict):
        raise fail(path, f"metadata model_config is not a JSON object (found {type(saved_config).__name__})")
    check_model_config(name, saved_config, f"{path}: its recorded model_config")
    config = {**saved_config, **config}
    model = build_model(name, **config)
    check_fit(model, state_dict, path, name, config)
    load_state_dict_checked(model, state_dict, path, f"model {name!r}")
    return model
