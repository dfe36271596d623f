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


def channels_last_batch_statistics(x: torch.Tensor, block: int = 512, chunk_blocks: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a channels-last (B, C, H, W) tensor -> ((C,), (C,)).

    Two passes (mean, then centred squares, so a large mean does not cancel digits), each summing
    ``block`` pixels at a time in the tensor's dtype and the block sums in float64. Viewed as a
    (B*H*W, C) matrix the tensor needs no copy, and the sums run along contiguous channel rows
    (``torch.var_mean`` over dims (0, 2, 3) is ~5x slower on this layout). The centred copy is
    made ``chunk_blocks`` blocks at a time, so the extra memory stays a few MB.
    """
    channels = x.shape[1]
    rows = x.permute(0, 2, 3, 1).reshape(-1, channels)
    count = rows.shape[0]
    n_blocks = count // block
    head, tail = rows[: n_blocks * block].view(n_blocks, block, channels), rows[n_blocks * block :]
    mean = ((head.sum(1).double().sum(0) + tail.double().sum(0)) / count).to(x.dtype)
    squares = (tail - mean).double().square().sum(0)
    for part in head.split(chunk_blocks):
        squares += torch.linalg.vector_norm(part - mean, dim=1).double().square().sum(0)
    return mean, (squares / count).to(x.dtype)


class _BatchNormWithExactStatistics(torch.autograd.Function):
    """Training-mode batch norm whose batch mean and variance come from :func:`channels_last_batch_statistics`.

    Forward normalises with PyTorch's own kernel, given those statistics; backward is PyTorch's
    training-mode batch-norm backward, given the same statistics. Only where the statistics come
    from differs from ``F.batch_norm(..., training=True)``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean, variance = channels_last_batch_statistics(x)
        output = F.batch_norm(x, mean, variance, weight, bias, False, 0.0, eps)
        ctx.eps = eps
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(variance + eps))
        ctx.mark_non_differentiable(mean, variance)
        return output, mean, variance

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_variance):
        x, weight, mean, inverse_std = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_output.contiguous(memory_format=torch.channels_last), x, weight, None, None, mean, inverse_std, True, ctx.eps,
            [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
        )
        return grad_x, grad_weight, grad_bias, None


class AccurateBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training-mode statistics on channels-last CPU tensors are summed exactly.

    Same function, gradients and running-statistics update as ``nn.BatchNorm2d``; what changes is
    rounding. PyTorch's CPU batch-norm kernel for channels-last tensors sums a channel's values and
    squares in a way that loses digits over a few hundred thousand pixels (on 8 x 16 x 197 x 233
    values: mean error 2e-5, relative variance error 3e-4, where NCHW and
    :func:`channels_last_batch_statistics` give 6e-8 and 4e-8). Through a trained SPiN that moved
    the first-step loss by 4e-4 relative. Used for channels-last CPU training
    (:func:`accurate_batch_norms`); eval mode, NCHW, GPU and bf16 inputs take plain batch norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or x.dim() != 4 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)  # NCHW and GPU kernels are accurate; bf16 (autocast) is its own matter
        self._check_input_dim(x)
        output, mean, variance = _BatchNormWithExactStatistics.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            count = x.numel() // x.shape[1]
            with torch.no_grad():  # running variance is unbiased, as in PyTorch's kernel
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((variance * count / max(count - 1, 1)).to(self.running_var.dtype), factor)
        return output


def accurate_batch_norms(model: nn.Module) -> nn.Module:
    """Turns every ``nn.BatchNorm2d`` of ``model`` into an :class:`AccurateBatchNorm2d`, in place; returns ``model``.

    Parameters, buffers and state-dict keys stay the same objects (only the class changes), so an
    optimizer built before keeps working and checkpoints load either way.
    """
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = AccurateBatchNorm2d
    return model
