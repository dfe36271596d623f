"""Layers the baselines share that :mod:`spinseg.models.blocks` does not provide.

* :class:`ConvNormActivation`: 2-D or 3-D convolution, optional batch norm, activation, with
  Keras-style "same" padding (the D-UNet and CLCI-Net releases are Keras models).
* :class:`DoubleConv`: two of those (the "BN_block" / "conv_2" of both releases).
* :class:`SqueezeExcitation`: channel re-weighting by global pooling and a two-layer bottleneck.
* :class:`ConvLSTM2d`: a convolutional LSTM run over a short list of feature maps.
* :func:`pad_to_multiple` / :func:`crop_to_size`: let fixed-stride networks take any H, W.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import activation_from_name

PADDING_MODES = {"replicate": "replicate", "zeros": "constant"}


class ConvNormActivation(nn.Module):
    """Convolution, optional batch norm, activation: (B, C_in, [D,] H, W) -> (B, C_out, [D,] H', W').

    Padding mimics Keras ``padding="same"``: an odd kernel pads symmetrically (stride s gives
    ceil(H / s)); an even kernel (the 2x2 up-convolutions) pads one extra row/column at the
    bottom/right. The convolution has a bias only without batch norm, since batch norm's shift
    makes a bias redundant.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        activation: str | None = "relu",
        use_batch_norm: bool = True,
        dimensions: int = 2,
    ):
        super().__init__()
        if dimensions not in (2, 3):
            raise ValueError(f"dimensions must be 2 or 3, got {dimensions}")
        convolution = nn.Conv2d if dimensions == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dimensions == 2 else nn.BatchNorm3d
        total_padding = dilation * (kernel_size - 1)
        # Even kernels cannot pad symmetrically; F.pad then applies Keras' (0 before, 1 after).
        self.extra_padding = (0, 1) * dimensions if total_padding % 2 else None
        self.conv = convolution(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=total_padding // 2,
            dilation=dilation,
            bias=not use_batch_norm,
        )
        self.batch_norm = norm(out_channels) if use_batch_norm else None
        self.activation = activation_from_name(activation)
        # Set by use_keras_arithmetic: pad exactly as TensorFlow's "same" (see tensorflow_same_padding).
        self.tensorflow_padding = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tensorflow_padding:
            x = F.pad(x, tensorflow_same_padding(x.shape[2:], self.conv))
        elif self.extra_padding is not None:
            x = F.pad(x, self.extra_padding)
        x = self.conv(x)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        return self.activation(x)


class DoubleConv(nn.Sequential):
    """Two 3x3(x3) ConvNormActivation layers: (B, C_in, [D,] H, W) -> (B, C_out, [D,] H, W)."""

    def __init__(
        self, in_channels: int, out_channels: int, activation: str, use_batch_norm: bool, dimensions: int = 2
    ):
        super().__init__(
            ConvNormActivation(in_channels, out_channels, 3, 1, 1, activation, use_batch_norm, dimensions),
            ConvNormActivation(out_channels, out_channels, 3, 1, 1, activation, use_batch_norm, dimensions),
        )


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): x (B, C, H, W) -> x * gate(x), gate in (0, 1)^C.

    Global average pooling, a bias-free C -> C // ratio ReLU layer and a bias-free C // ratio -> C
    sigmoid layer (the variant used by the D-UNet release). The bottleneck keeps at least 1 unit.
    """

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = max(channels // ratio, 1)
        self.squeeze = nn.Linear(channels, hidden, bias=False)
        self.excite = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class ConvLSTM2d(nn.Module):
    """Convolutional LSTM (Shi et al. 2015) over a list of T maps (B, C_in, H, W) -> last hidden (B, C, H, W).

    Gates (input, forget, cell, output) come from a convolution of the input (with bias) plus a
    bias-free convolution of the previous hidden state, as in Keras' ``ConvLSTM2D`` (``kernel`` and
    ``recurrent_kernel``); tanh cell activation, sigmoid gates. The state starts at zero, so the
    recurrent convolution is skipped at the first step. :meth:`reset_forget_bias` sets the forget
    gate's bias to 1 (Keras' ``unit_forget_bias``); call it after any re-initialisation.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__()
        self.hidden_channels = hidden_channels
        # Keras' ConvLSTM2D gates use hard_sigmoid; use_keras_arithmetic switches to it.
        self.gate_activation = torch.sigmoid
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2)
        self.recurrent_conv = nn.Conv2d(
            hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.reset_forget_bias()

    def reset_forget_bias(self) -> None:
        """Zero biases except the forget gate's, which is 1 so the cell state is kept early in training."""
        with torch.no_grad():
            self.input_conv.bias.zero_()
            self.input_conv.bias[self.hidden_channels : 2 * self.hidden_channels] = 1.0

    def forward(self, sequence: Sequence[torch.Tensor]) -> torch.Tensor:
        hidden = cell = None
        for x in sequence:
            gates = self.input_conv(x)
            if hidden is not None:
                gates = gates + self.recurrent_conv(hidden)
            input_gate, forget_gate, candidate, output_gate = torch.chunk(gates, 4, dim=1)
            gate = self.gate_activation
            new_cell = gate(input_gate) * torch.tanh(candidate)
            if cell is not None:
                new_cell = new_cell + gate(forget_gate) * cell
            cell = new_cell
            hidden = gate(output_gate) * torch.tanh(cell)
        if hidden is None:
            raise ValueError("ConvLSTM2d needs a sequence of at least one tensor")
        return hidden


def validate_padding_mode(padding_mode: str) -> None:
    """Raises ``ValueError`` unless ``padding_mode`` is "replicate" or "zeros"."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {sorted(PADDING_MODES)}, got {padding_mode!r}")


def pad_to_multiple(x: torch.Tensor, multiple: int, padding_mode: str = "replicate") -> torch.Tensor:
    """Pads (B, C, H, W) to (B, C, H', W') with H', W' the next multiples of ``multiple``.

    The padding is split evenly (the extra row/column at the bottom/right) so the image stays
    centred; :func:`crop_to_size` undoes it.
    """
    height, width = x.shape[-2:]
    pad_height = -height % multiple
    pad_width = -width % multiple
    if pad_height == 0 and pad_width == 0:
        return x
    padding = (pad_width // 2, pad_width - pad_width // 2, pad_height // 2, pad_height - pad_height // 2)
    return F.pad(x, padding, mode=PADDING_MODES[padding_mode])


def crop_to_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crops (B, C, H', W') padded by :func:`pad_to_multiple` back to (B, C, H, W) with (H, W) = ``size``."""
    height, width = size
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


def validate_common_options(activation_func: str, weight_initializer: str) -> None:
    """Raises ``ValueError`` for an unknown activation or weight initializer name."""
    activation_from_name(activation_func)
    known_initializers = ("kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "default")
    if weight_initializer not in known_initializers:
        raise ValueError(f"weight_initializer must be one of {known_initializers}, got {weight_initializer!r}")


def validate_positive_ints(name: str, values: Sequence[int], length: int) -> None:
    """Raises ``ValueError`` unless ``values`` holds ``length`` positive integers."""
    if len(values) != length or not all(isinstance(value, int) and value > 0 for value in values):
        raise ValueError(f"{name} must be {length} positive integers, got {list(values)!r}")


# Keras' default batch-norm epsilon (PyTorch's is 1e-5).
KERAS_BATCH_NORM_EPSILON = 1e-3


def keras_hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2 ``hard_sigmoid``: clip(0.2 x + 0.5, 0, 1), elementwise (not torch's x / 6 + 0.5)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def tensorflow_same_padding(size: Sequence[int], convolution: nn.Module) -> tuple[int, ...]:
    """F.pad amounts that make ``convolution`` (built with padding 0) compute TensorFlow's "same".

    TensorFlow pads total = max((ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0) per axis, floor(total / 2)
    before and the rest after: a 3x3 stride-2 convolution of an even size pads 0 before and 1 after,
    and strides 4, 8, 16 pad nothing at all. Returns F.pad's order (last axis first).
    """
    padding = []
    for length, kernel, stride, dilation in zip(size, convolution.kernel_size, convolution.stride, convolution.dilation):
        total = max((-(-length // stride) - 1) * stride + dilation * (kernel - 1) + 1 - length, 0)
        padding.append((total // 2, total - total // 2))
    return tuple(amount for pair in reversed(padding) for amount in pair)


def add_zero_bias(convolution: nn.Module) -> None:
    """Gives a bias-free convolution a (zero) bias parameter, as the Keras layer it must mirror has."""
    if convolution.bias is None:
        convolution.bias = nn.Parameter(torch.zeros(convolution.out_channels))


def use_keras_arithmetic(model: nn.Module) -> None:
    """Makes a built port compute what its authors' Keras model computes, in place.

    Batch norm epsilon 1e-3, TensorFlow's "same" padding in every :class:`ConvNormActivation`
    (asymmetric for strided convolutions), a bias on every convolution of those blocks (Keras'
    ``use_bias=True`` default, even before batch norm) and hard_sigmoid ConvLSTM gates.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = KERAS_BATCH_NORM_EPSILON
        elif isinstance(module, ConvNormActivation):
            module.tensorflow_padding = True
            module.conv.padding = (0,) * len(module.conv.kernel_size)
            add_zero_bias(module.conv)
        elif isinstance(module, ConvLSTM2d):
            module.gate_activation = keras_hard_sigmoid
