"""Loads the authors' Keras 2.2 weights of X-Net, CLCI-Net and D-UNet into the PyTorch ports.

Reads ``model.save_weights`` files (``.h5``), whole-model files (``.hdf5``, weights under
``model_weights/``) and the multi-GPU layout (every weight nested in one ``model_1`` group, in
trainable-first order) with h5py; TensorFlow is not needed. See ``docs/keras_weights.md``.

Keras names layers by a process-wide counter, so names say nothing reliable. Layers are taken in
the file's order (``layer_names``, which is Keras' topological order) and each is matched by kind
and shape to the earliest unmatched layer of the port (listed per model below in the same
order); a batch norm goes to the earliest matched convolution still waiting for its batch norm,
since Keras may list two convolutions before their two batch norms. The port is built with
``keras_release=True`` (biases, epsilon 1e-3, TensorFlow padding...), its widths read from the
weights' shapes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import fail, missing
from .layers_extra import DoubleConv
from .registry import build_model

KERAS_MODELS = ("xnet", "clcinet", "dunet")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5_file(path: str | os.PathLike) -> bool:
    """True for a file whose name ends in .h5/.hdf5/.keras or that starts with HDF5's signature."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5", ".keras"):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


@dataclass
class KerasLayer:
    """One Keras layer's weights, converted to PyTorch layout: ``tensors`` maps torch names to arrays."""

    name: str
    kind: str  # "conv" (Conv2D, DepthwiseConv2D, Conv3D), "batch_norm", "dense" or "conv_lstm"
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def describe(self) -> str:
        """e.g. "'conv2d_17' (conv weight 128x64x1x1, bias 128)"."""
        shapes = ", ".join(f"{key} {'x'.join(map(str, value.shape))}" for key, value in self.tensors.items())
        return f"{self.name!r} ({self.kind} {shapes})"


# Keras weight name (last path component, without ":0") -> PyTorch name, per kind.
BATCH_NORM_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def convert_layer(name: str, weights: dict[str, np.ndarray]) -> KerasLayer:
    """Keras arrays of one layer -> a :class:`KerasLayer` in PyTorch layout.

    Conv2D (kh, kw, cin, cout) -> (cout, cin, kh, kw); DepthwiseConv2D (kh, kw, cin, 1) -> (cin, 1, kh, kw);
    Conv3D (rows, cols, slices, cin, cout) -> (cout, cin, slices, rows, cols) (D-UNet's slice axis is
    Keras' last spatial axis and our first); Dense (in, out) -> (out, in); ConvLSTM2D kernels like
    Conv2D, gate columns i, f, c, o kept (our order too).
    """
    if "moving_mean" in weights:
        return KerasLayer(name, "batch_norm", {BATCH_NORM_NAMES[key]: value for key, value in weights.items()})
    if "recurrent_kernel" in weights:
        tensors = {
            "input_conv.weight": weights["kernel"].transpose(3, 2, 0, 1),
            "recurrent_conv.weight": weights["recurrent_kernel"].transpose(3, 2, 0, 1),
        }
        if "bias" in weights:
            tensors["input_conv.bias"] = weights["bias"]
        return KerasLayer(name, "conv_lstm", tensors)
    if "depthwise_kernel" in weights:
        tensors = {"weight": weights["depthwise_kernel"].transpose(2, 3, 0, 1)}
        kind = "conv"
    elif "kernel" in weights and weights["kernel"].ndim == 2:
        tensors, kind = {"weight": weights["kernel"].T}, "dense"
    elif "kernel" in weights and weights["kernel"].ndim in (4, 5):
        axes = (3, 2, 0, 1) if weights["kernel"].ndim == 4 else (4, 3, 2, 0, 1)
        tensors, kind = {"weight": weights["kernel"].transpose(*axes)}, "conv"
    else:
        raise ValueError(f"layer {name!r} holds weights of no kind this loader knows: {', '.join(weights)}")
    if "bias" in weights:
        tensors["bias"] = weights["bias"]
    return KerasLayer(name, kind, tensors)


def decode(value) -> str:
    """h5py returns Keras 2.2's fixed-length attribute strings as bytes."""
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def read_keras_layers(path: Path) -> list[KerasLayer]:
    """The weighted layers of a Keras weights / whole-model / multi-GPU file, in file order.

    Inside each top-level layer the weights are grouped by their layer prefix in order of first
    appearance: for a plain layer that is the layer itself; for a nested model (the multi-GPU
    ``model_1``, trainable weights first, then the moving statistics) that is its layers in order.
    """
    import h5py

    layers = []
    with h5py.File(path, "r") as handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in root.attrs:
            raise ValueError("no 'layer_names' attribute: not a Keras weights file")
        for layer_name in map(decode, root.attrs["layer_names"]):
            group = root[layer_name]
            grouped: dict[str, dict[str, np.ndarray]] = {}
            for weight_name in map(decode, group.attrs["weight_names"]):
                prefix, _, short = weight_name.rpartition("/")
                grouped.setdefault(prefix or layer_name, {})[short.split(":")[0]] = np.asarray(group[weight_name], dtype=np.float32)
            layers += [convert_layer(prefix.rpartition("/")[2] or prefix, weights) for prefix, weights in grouped.items()]
    return layers


@dataclass
class PortSlot:
    """One weighted layer of a port: ``tensors`` maps the names :class:`KerasLayer` uses to its tensors."""

    name: str
    kind: str
    module: nn.Module
    owner: "PortSlot | None" = None  # the convolution a batch norm follows

    def tensors(self) -> dict[str, torch.Tensor]:
        """The slot's parameters and batch-norm buffers (no ``num_batches_tracked``), torch names."""
        state = self.module.state_dict()
        return {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}

    def fits(self, layer: KerasLayer) -> bool:
        """Same kind, same tensor names, same shapes."""
        tensors = self.tensors()
        return layer.kind == self.kind and set(tensors) == set(layer.tensors) and all(
            tuple(tensors[key].shape) == layer.tensors[key].shape for key in tensors
        )


def conv_with_norm(name: str, convolution: nn.Module, batch_norm: nn.Module | None) -> Iterator[PortSlot]:
    """A convolution slot, then (if any) its batch norm's."""
    conv_slot = PortSlot(name, "conv", convolution)
    yield conv_slot
    if batch_norm is not None:
        yield PortSlot(f"{name} batch norm", "batch_norm", batch_norm, owner=conv_slot)


def block_slots(name: str, block: nn.Module) -> Iterator[PortSlot]:
    """Slots of a Conv2dBlock / ConvNormActivation (``conv`` + ``batch_norm``) or of a DoubleConv."""
    if isinstance(block, DoubleConv):
        for index, child in enumerate(block):
            yield from block_slots(f"{name}.{index}", child)
        return
    yield from conv_with_norm(name, block.conv, block.batch_norm)


def xnet_slots(model: nn.Module) -> Iterator[PortSlot]:
    """X-Net's weighted layers in Keras' order (each X-block: its three separable convs, then the shortcut)."""

    def x_block(name: str, block: nn.Module) -> Iterator[PortSlot]:
        for index, separable in enumerate(block.convolutions):
            yield from conv_with_norm(f"{name}.convolutions.{index}.depthwise", separable.depthwise, separable.depthwise_batch_norm)
            yield from block_slots(f"{name}.convolutions.{index}.pointwise", separable.pointwise)
        yield from block_slots(f"{name}.shortcut", block.shortcut)

    for index, block in enumerate(model.encoder):
        yield from x_block(f"encoder.{index}", block)
    fsm = model.feature_similarity
    yield from block_slots("feature_similarity.reduce", fsm.reduce)
    for part in ("query", "key", "value", "output_projection"):
        yield PortSlot(f"feature_similarity.{part}", "conv", getattr(fsm, part))
    yield from block_slots("feature_similarity.expand", fsm.expand)
    for index, stage in enumerate(model.decoder):
        yield from block_slots(f"decoder.{index}.upsample.conv", stage.upsample.conv)
        yield from x_block(f"decoder.{index}.block", stage.block)
    yield PortSlot("output", "conv", model.output)


def clcinet_slots(model: nn.Module) -> Iterator[PortSlot]:
    """CLCI-Net's weighted layers in Keras' order (CLF-ASPP: image pooling, cross-level, 1x1, dilated)."""
    yield from block_slots("encoder_levels.0", model.encoder_levels[0])
    for index, fusion in enumerate(model.cross_level_fusions):
        for level, downsampler in enumerate(fusion.downsamplers):
            yield from block_slots(f"cross_level_fusions.{index}.downsamplers.{level}", downsampler)
        yield from block_slots(f"cross_level_fusions.{index}.fusion", fusion.fusion)
        yield from block_slots(f"encoder_levels.{index + 1}", model.encoder_levels[index + 1])
    aspp = model.aspp
    yield from block_slots("aspp.image_pooling", aspp.image_pooling)
    for index, module in enumerate(aspp.cross_level):
        yield from block_slots(f"aspp.cross_level.{index}", module)
    yield from block_slots("aspp.pointwise", aspp.pointwise)
    for index, module in enumerate(aspp.dilated):
        yield from block_slots(f"aspp.dilated.{index}", module)
    yield from block_slots("aspp.fusion", aspp.fusion)
    for index, level in enumerate(model.decoder_levels):
        yield from block_slots(f"decoder_levels.{index}.up_convolution", level.up_convolution)
        yield from block_slots(f"decoder_levels.{index}.skip_convolution", level.skip_convolution)
        yield PortSlot(f"decoder_levels.{index}.context_inference", "conv_lstm", level.context_inference)
        yield from block_slots(f"decoder_levels.{index}.convolutions", level.convolutions)
    yield PortSlot("output", "conv", model.output)


def dunet_slots(model: nn.Module) -> Iterator[PortSlot]:
    """D-UNet's weighted layers in Keras' order (the 3-D branch first, fusions after their 2-D level)."""
    for level in (1, 2, 3):
        yield from block_slots(f"encoder_3d_level{level}", getattr(model, f"encoder_3d_level{level}"))
    for index, level in enumerate(model.encoder_levels):
        yield from block_slots(f"encoder_levels.{index}", level)
        fusion = getattr(model, f"fusion_level{index + 1}", None)
        if fusion is not None:
            name = f"fusion_level{index + 1}"
            yield PortSlot(f"{name}.reduce_channels", "conv", fusion.reduce_channels)
            yield PortSlot(f"{name}.transform", "conv", fusion.transform)
            for branch in ("excitation_3d", "excitation_2d"):
                for part in ("squeeze", "excite"):
                    yield PortSlot(f"{name}.{branch}.{part}", "dense", getattr(getattr(fusion, branch), part))
    for index, (up, level) in enumerate(zip(model.up_convolutions, model.decoder_levels)):
        yield from block_slots(f"up_convolutions.{index}.conv", up.conv)
        yield from block_slots(f"decoder_levels.{index}", level)
    yield PortSlot("output", "conv", model.output)


PORT_SLOTS: dict[str, Callable[[nn.Module], Iterator[PortSlot]]] = {
    "xnet": xnet_slots,
    "clcinet": clcinet_slots,
    "dunet": dunet_slots,
}


def kernels(layers: list[KerasLayer], ndim: int) -> list[np.ndarray]:
    """The (PyTorch-layout) weights of the convolution layers with ``ndim`` dimensions, in file order."""
    return [layer.tensors["weight"] for layer in layers if layer.kind == "conv" and layer.tensors["weight"].ndim == ndim]


def xnet_config(layers: list[KerasLayer]) -> dict:
    """X-Net widths from the file: every X-block has three depthwise convs (in, out, out channels)."""
    depthwise = [w.shape[0] for w in kernels(layers, 4) if w.shape[1] == 1 and w.shape[2:] == (3, 3)]
    if not depthwise or len(depthwise) % 3 or (len(depthwise) // 3) % 2 == 0:
        raise ValueError(f"found {len(depthwise)} depthwise 3x3 convolutions, an X-Net has 3 per X-block and an odd number of X-blocks")
    n_stages = (len(depthwise) // 3 + 1) // 2
    return {"input_channels": int(depthwise[0]), "n_filters": [int(depthwise[3 * stage + 1]) for stage in range(n_stages)]}


def clcinet_config(layers: list[KerasLayer]) -> dict:
    """CLCI-Net widths: levels 1-4 from the ConvLSTMs, the ASPP width from the first up-convolution."""
    lstm_widths = [int(layer.tensors["recurrent_conv.weight"].shape[1]) for layer in layers if layer.kind == "conv_lstm"]
    up_convolutions = [w for w in kernels(layers, 4) if w.shape[2:] == (2, 2)]
    convolutions = kernels(layers, 4)
    if len(lstm_widths) != 4 or not up_convolutions or not convolutions:
        raise ValueError(f"found {len(lstm_widths)} ConvLSTM2D layers and {len(up_convolutions)} 2x2 up-convolutions, a CLCI-Net has 4 of each")
    n_filters = list(reversed(lstm_widths)) + [2 * lstm_widths[0]]  # the release's 512 = 2 x 256
    aspp_output = int(up_convolutions[0].shape[1])
    fusion = [w for w in convolutions if w.shape[2:] == (1, 1)]
    return {
        "input_channels": int(convolutions[0].shape[1]),
        "n_filters": n_filters,
        "fusion_expansion": max(int(fusion[0].shape[0]) // n_filters[1], 1) if fusion else 4,
        "aspp_filters": max(aspp_output // 4, 1),  # the release's 256 = 1024 / 4
        "aspp_output_channels": aspp_output,
    }


def dunet_config(layers: list[KerasLayer]) -> dict:
    """D-UNet widths and input slices: the first 2-D conv's input, the 3-D convs and the up-convolutions."""
    volume = [int(w.shape[0]) for w in kernels(layers, 5) if w.shape[2:] == (3, 3, 3)]
    up_convolutions = [w for w in kernels(layers, 4) if w.shape[2:] == (2, 2)]
    plain = [w for w in kernels(layers, 4) if w.shape[2:] == (3, 3)]
    if len(volume) != 6 or len(up_convolutions) != 4 or not plain:
        raise ValueError(f"found {len(volume)} 3x3x3 Conv3D layers and {len(up_convolutions)} 2x2 up-convolutions, a D-UNet has 6 and 4")
    n_filters = [int(w.shape[0]) for w in reversed(up_convolutions)] + [int(up_convolutions[0].shape[1])]
    return {"input_channels": int(plain[0].shape[1]), "n_filters": n_filters, "n_filters_3d": volume[::2]}


CONFIG_READERS = {"xnet": xnet_config, "clcinet": clcinet_config, "dunet": dunet_config}


def match_layers(layers: list[KerasLayer], slots: list[PortSlot]) -> list[tuple[KerasLayer, PortSlot]]:
    """Pairs each Keras layer with a port slot by kind and shape, in file order (see the module docstring).

    Raises ``ValueError`` naming the first Keras layer that fits no slot, or the first slot left empty.
    """
    pairs, matched, waiting = [], set(), []  # waiting: matched convolutions whose batch norm has not come
    for index, layer in enumerate(layers):
        if layer.kind == "batch_norm":
            candidates = [slot for conv in waiting for slot in slots if slot.owner is conv and id(slot) not in matched]
        else:
            candidates = [slot for slot in slots if id(slot) not in matched and slot.owner is None]
        slot = next((slot for slot in candidates if slot.fits(layer)), None)
        if slot is None:
            raise ValueError(f"layer {index + 1} of the file, {layer.describe()}, fits no remaining layer of the model")
        matched.add(id(slot))
        pairs.append((layer, slot))
        if slot.owner is not None:
            waiting.remove(slot.owner)
        elif any(other.owner is slot for other in slots):
            waiting.append(slot)
    missing = [slot for slot in slots if id(slot) not in matched]
    if missing:
        raise ValueError(f"the file has no weights for the model's {missing[0].name} ({len(missing)} layers missing)")
    return pairs


def load_keras_model(path: str | os.PathLike, name: str, **config) -> nn.Module:
    """Builds port ``name`` ("xnet", "clcinet", "dunet") as the Keras file at ``path`` describes and loads it.

    ``config`` overrides what is read from the file. Returns the model in eval mode; ``model(x)``
    maps (B, C, H, W) to one logit channel (B, 1, H, W) whose sigmoid is the Keras model's output.
    Any unreadable or non-fitting file raises a one-line ``UserInputError`` naming it.
    """
    path = Path(path)
    if name not in KERAS_MODELS:
        raise fail(path, f"a Keras weights file, but model {name!r} has no Keras release (only {', '.join(KERAS_MODELS)})")
    if not path.is_file():
        raise missing(path, "checkpoint", suffixes=(".h5", ".hdf5"))
    try:
        layers = read_keras_layers(path)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise fail(path, f"not a readable Keras weights file ({str(error).splitlines()[0][:160] if str(error) else type(error).__name__})") from None
    try:
        described = CONFIG_READERS[name](layers)
    except (ValueError, IndexError) as error:
        raise fail(path, f"not the Keras weights of {name!r}: {error}") from None
    requested = config.get("input_channels", described["input_channels"])
    if requested != described["input_channels"]:
        raise fail(path, f"this {name!r} takes {described['input_channels']} input slice(s), not {requested} (e.g. --n_chunk)")
    model_config = {**described, **config, "keras_release": True}
    model = build_model(name, **model_config)
    try:
        pairs = match_layers(layers, list(PORT_SLOTS[name](model)))
    except ValueError as error:
        raise fail(path, f"does not fit {name!r}: {error}") from None
    with torch.no_grad():
        for layer, slot in pairs:
            targets = slot.tensors()
            for key, value in layer.tensors.items():
                targets[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return model.eval()
