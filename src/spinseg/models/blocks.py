"""Small composable blocks shared by every network in :mod:`spinseg.models`.

Module attribute names (``conv``, ``batch_norm``, ``projection`` ...) are chosen so that state-dict
keys match the original SPiN release, which lets us load the authors' checkpoints without renaming.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The release uses LeakyReLU with negative slope 0.1 everywhere.
LEAKY_RELU_SLOPE = 0.1


def activation_from_name(name: str | None) -> nn.Module:
    """Returns the activation module for ``name`` ("leaky_relu", "relu", "elu", "linear"/None)."""
    if name in (None, "linear", "none"):
        return nn.Identity()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE)
    if name == "relu":
        return nn.ReLU()
    if name == "elu":
        return nn.ELU()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation function: {name!r}")


def initialize_weights(module: nn.Module, initializer: str = "kaiming_uniform") -> None:
    """Initialises every convolution / linear weight of ``module`` in place.

    ``initializer`` is one of "kaiming_uniform", "kaiming_normal", "xavier_uniform",
    "xavier_normal" or "default" (PyTorch's own). Biases are set to zero.
    """
    initializers: dict[str, Callable[[torch.Tensor], None]] = {
        "kaiming_uniform": nn.init.kaiming_uniform_,
        "kaiming_normal": nn.init.kaiming_normal_,
        "xavier_uniform": nn.init.xavier_uniform_,
        "xavier_normal": nn.init.xavier_normal_,
    }
    if initializer == "default":
        return
    if initializer not in initializers:
        raise ValueError(f"unknown weight initializer: {initializer!r}")
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            initializers[initializer](layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class Conv2dBlock(nn.Module):
    """Convolution (no bias), optional batch norm, then activation: (B, C_in, H, W) -> (B, C_out, H', W').

    Padding is ``kernel_size // 2`` so stride 1 keeps the size and stride 2 gives ceil(H / 2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        activation: str | None = "leaky_relu",
        use_batch_norm: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.batch_norm = nn.BatchNorm2d(out_channels) if use_batch_norm else None
        self.activation = activation_from_name(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        return self.activation(x)


class ResidualBlock(nn.Module):
    """Two 3x3 convolution blocks plus a shortcut (ResNet basic block).

    (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)). The shortcut is a bias-free
    1x1 convolution without batch norm when the shape changes and the identity otherwise. As in the
    release, every block owns ``projection`` weights (so checkpoints load key for key and the
    parameter count matches); an identity block's projection is frozen, since it never gets a
    gradient (DistributedDataParallel would otherwise wait for it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: str = "leaky_relu",
        use_batch_norm: bool = False,
    ):
        super().__init__()
        self.conv1 = Conv2dBlock(in_channels, out_channels, 3, stride, activation, use_batch_norm)
        self.conv2 = Conv2dBlock(out_channels, out_channels, 3, 1, activation, use_batch_norm)
        self.projection = Conv2dBlock(in_channels, out_channels, 1, stride, None, False)
        self.use_projection = stride != 1 or in_channels != out_channels
        if not self.use_projection:
            self.projection.requires_grad_(False)
        self.activation = activation_from_name(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.projection(x) if self.use_projection else x
        return self.activation(self.conv2(self.conv1(x)) + shortcut)


def residual_stage(
    in_channels: int, out_channels: int, n_blocks: int, stride: int, activation: str, use_batch_norm: bool
) -> nn.Sequential:
    """``n_blocks`` residual blocks; only the first changes channels and applies ``stride``."""
    blocks = [ResidualBlock(in_channels, out_channels, stride, activation, use_batch_norm)]
    blocks += [ResidualBlock(out_channels, out_channels, 1, activation, use_batch_norm) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class UpsampleConvBlock(nn.Module):
    """Nearest-neighbour upsampling to a given size, then a 3x3 convolution block.

    (B, C_in, h, w) -> (B, C_out, H, W), with (H, W) given at call time so odd sizes round-trip.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: str, use_batch_norm: bool):
        super().__init__()
        self.conv = Conv2dBlock(in_channels, out_channels, 3, 1, activation, use_batch_norm)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate [upsampled, skip] and fuse with a 3x3 conv.

    ``x`` (B, C_in, h, w) and ``skip`` (B, C_skip, H, W) -> (B, C_out, H, W). With ``skip=None`` the
    block upsamples to ``size`` and only convolves.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, activation: str, use_batch_norm: bool
    ):
        super().__init__()
        self.deconv = UpsampleConvBlock(in_channels, out_channels, activation, use_batch_norm)
        self.conv = Conv2dBlock(out_channels + skip_channels, out_channels, 3, 1, activation, use_batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: Sequence[int] | None = None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else size
        upsampled = self.deconv(x, size)
        if skip is not None:
            upsampled = torch.cat([upsampled, skip], dim=1)
        return self.conv(upsampled)


def space_to_depth(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, C, H*r, W*r) -> (B, C*r*r, H, W); channel c*r*r + i*r + j holds pixel (i, j) of each block."""
    return F.pixel_unshuffle(x, block_size) if block_size > 1 else x


def depth_to_space(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, C*r*r, H, W) -> (B, C, H*r, W*r), the inverse of :func:`space_to_depth`."""
    return F.pixel_shuffle(x, block_size) if block_size > 1 else x


class CenteredBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that, in training, subtracts its running mean before computing batch statistics.

    Same function, same gradients and same running-statistics update as ``nn.BatchNorm2d`` (batch
    norm is invariant to a constant per-channel shift, and the running-mean update is affine, so
    shifting it and adding the shift back gives the same value). What changes is rounding: PyTorch's
    CPU kernel for channels-last inputs accumulates the variance in a way that loses digits when a
    channel's mean is large against its spread (mean 50, std 0.05 gave errors of 4e-3 where NCHW
    gives 5e-5); centring first removes that cancellation. Used for channels-last CPU training
    (:func:`center_batch_norms`); costs one extra elementwise pass per batch norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and self.running_mean is not None):
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        shift = self.running_mean.detach().clone()
        # The statistics of x - shift are tracked around 0 in a temporary (autograd keeps the
        # running-mean argument, so the buffer itself must not change after the call) and moved
        # back: (1 - m) * (mu - s) + m * (mean - s) + s = (1 - m) * mu + m * mean.
        centered_running_mean = torch.zeros_like(shift)
        output = F.batch_norm(x - shift.to(x.dtype).reshape(1, -1, 1, 1), centered_running_mean, self.running_var,
                              self.weight, self.bias, True, factor, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(centered_running_mean + shift)
        return output


def center_batch_norms(model: nn.Module) -> nn.Module:
    """Turns every ``nn.BatchNorm2d`` of ``model`` into a :class:`CenteredBatchNorm2d`, in place; returns ``model``.

    Parameters, buffers and state-dict keys stay the same objects (only the class changes), so an
    optimizer built before keeps working and checkpoints load either way.
    """
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = CenteredBatchNorm2d
    return model
