"""X-Net (Qi et al., MICCAI 2019): a U-Net of depthwise-separable "X-blocks" with a non-local
Feature Similarity Module (FSM) at the bottleneck.

Data flow for an input x of shape (B, C, H, W), padded to (H', W'), multiples of 2**(L - 1):

1. Encoder: L stages (64, 128, 256, 512, 1024 channels by default); each is an X-block, and every
   stage after the first starts with a 2x2 max-pool.
2. Bottleneck: the FSM relates every position of the deepest map to every other one (long-range
   dependencies) at a fraction of the cost of a full-width non-local block.
3. Decoder: per stage, nearest 2x upsampling + 3x3 convolution, concatenation with the encoder
   stage's output, an X-block.
4. A 1x1 convolution to one logit channel, cropped back to H x W.

The layer layout follows the authors' released Keras model (``create_xception_unet_n``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import RemembersConfig
from .blocks import Conv2dBlock, UpsampleConvBlock, activation_from_name, initialize_weights
from .layers_extra import add_zero_bias, crop_to_size, pad_to_multiple, use_keras_arithmetic, validate_common_options, validate_padding_mode

SIMILARITY_MODES = ("dot_product", "softmax")


class DepthwiseSeparableConvBlock(nn.Module):
    """Depthwise 3x3 conv + BN + activation, then pointwise 1x1 conv + BN + activation.

    (B, C_in, H, W) -> (B, C_out, H, W); the paper's (and Xception's) cheap replacement for a 3x3
    convolution: C_in * 9 + C_in * C_out weights instead of C_in * C_out * 9.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: str, use_batch_norm: bool):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.depthwise_batch_norm = nn.BatchNorm2d(in_channels) if use_batch_norm else None
        self.depthwise_activation = activation_from_name(activation)
        self.pointwise = Conv2dBlock(in_channels, out_channels, 1, 1, activation, use_batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(x)
        if self.depthwise_batch_norm is not None:
            x = self.depthwise_batch_norm(x)
        return self.pointwise(self.depthwise_activation(x))


class XBlock(nn.Module):
    """X-block: three depthwise-separable conv blocks plus a 1x1 conv shortcut, summed.

    (B, C_in, H, W) -> (B, C_out, H, W). The shortcut is a 1x1 conv + BN + activation (always, as
    in the release, since the channel count changes in nearly every block); no activation after
    the sum.
    """

    def __init__(
        self, in_channels: int, out_channels: int, activation: str, use_batch_norm: bool, n_convolutions: int = 3
    ):
        super().__init__()
        self.shortcut = Conv2dBlock(in_channels, out_channels, 1, 1, activation, use_batch_norm)
        layers = [DepthwiseSeparableConvBlock(in_channels, out_channels, activation, use_batch_norm)]
        layers += [
            DepthwiseSeparableConvBlock(out_channels, out_channels, activation, use_batch_norm)
            for _ in range(n_convolutions - 1)
        ]
        self.convolutions = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolutions(x) + self.shortcut(x)


class FeatureSimilarityModule(nn.Module):
    """FSM: a non-local block on a channel-reduced copy of the features, added back residually.

    (B, C, H, W) -> (B, C, H, W). A 3x3 conv reduces C to C / ``reduction``; 1x1 convs give query,
    key and value with half that many channels; the (HW x HW) similarity of every pair of positions
    weights the values; a 1x1 conv maps them back and adds them to the reduced features; a 3x3 conv
    restores C channels, added to the input.

    ``similarity="dot_product"`` (the paper's) scales raw dot products by 1 / HW so the output does
    not depend on the map size; "softmax" normalises each query's row instead (embedded Gaussian).
    """

    def __init__(
        self, channels: int, activation: str, use_batch_norm: bool, reduction: int = 8, similarity: str = "dot_product"
    ):
        super().__init__()
        if similarity not in SIMILARITY_MODES:
            raise ValueError(f"fsm_similarity must be one of {SIMILARITY_MODES}, got {similarity!r}")
        reduced = max(channels // reduction, 1)
        intermediate = max(reduced // 2, 1)
        self.similarity = similarity
        self.reduce = Conv2dBlock(channels, reduced, 3, 1, activation, use_batch_norm)
        self.query = nn.Conv2d(reduced, intermediate, 1, bias=False)
        self.key = nn.Conv2d(reduced, intermediate, 1, bias=False)
        self.value = nn.Conv2d(reduced, intermediate, 1, bias=False)
        self.output_projection = nn.Conv2d(intermediate, reduced, 1, bias=False)
        self.expand = Conv2dBlock(reduced, channels, 3, 1, activation, use_batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        batch, _, height, width = reduced.shape
        query = self.query(reduced).flatten(2).transpose(1, 2)  # (B, HW, C')
        key = self.key(reduced).flatten(2)  # (B, C', HW)
        value = self.value(reduced).flatten(2).transpose(1, 2)  # (B, HW, C')
        affinity = torch.bmm(query, key)  # (B, HW, HW)
        if self.similarity == "softmax":
            affinity = torch.softmax(affinity, dim=-1)
        else:
            affinity = affinity / (height * width)
        context = torch.bmm(affinity, value).transpose(1, 2).reshape(batch, -1, height, width)
        return self.expand(reduced + self.output_projection(context)) + x


class XNetDecoderStage(nn.Module):
    """Upsample + 3x3 conv to the skip's size and channels, concatenate [skip, up], X-block.

    ``x`` (B, C_in, h, w), ``skip`` (B, C_skip, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, activation: str, use_batch_norm: bool):
        super().__init__()
        self.upsample = UpsampleConvBlock(in_channels, out_channels, activation, use_batch_norm)
        self.block = XBlock(skip_channels + out_channels, out_channels, activation, use_batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        upsampled = self.upsample(x, skip.shape[-2:])
        return self.block(torch.cat([skip, upsampled], dim=1))


class XNet(RemembersConfig):
    """X-Net: x (B, in_channels, H, W) -> logits (B, 1, H, W) for any H, W.

    Keyword arguments (defaults = the paper's / release's settings):
        input_channels: stacked slices per input, 1.
        n_filters: channels per encoder stage, fine to coarse, (64, 128, 256, 512, 1024); the
            decoder mirrors them.
        fsm_reduction: channel reduction inside the FSM, 8 (1024 -> 128, query/key/value 64).
        fsm_similarity: "dot_product" (paper) or "softmax".
        activation_func: "relu"; use_batch_norm: True; weight_initializer: "kaiming_normal"
            (the release's "he_normal").
        padding_mode: how inputs are padded to a multiple of 2**(L - 1) ("replicate" or "zeros").
        keras_release: False (what we train). True builds the authors' Keras model exactly, so its
            weights load (:mod:`spinseg.models.keras_weights`): a bias on every non-depthwise
            convolution outside the FSM's 1x1 projections (Keras' default, even before batch norm)
            and batch-norm epsilon 1e-3 instead of 1e-5.

    Parameters at defaults: 15,058,444. The paper reports 15.1M: the release's Keras model has
    15,117,647 weights, counting the 13,889 biases of its convolutions before batch norm (bias-free
    here) and batch norm's 45,314 running means and variances (buffers here).

    ``forward`` pads H and W evenly up to multiples of 2**(L - 1) (16 by default: 197 x 233 ->
    208 x 240) so every max-pool halves exactly, then crops the logits back.
    """

    PARAMETER_COUNT_AT_DEFAULTS = 15_058_444

    def __init__(
        self,
        *,
        input_channels: int = 1,
        n_filters: Sequence[int] = (64, 128, 256, 512, 1024),
        fsm_reduction: int = 8,
        fsm_similarity: str = "dot_product",
        activation_func: str = "relu",
        use_batch_norm: bool = True,
        weight_initializer: str = "kaiming_normal",
        padding_mode: str = "replicate",
        keras_release: bool = False,
    ):
        super().__init__()
        n_filters = list(n_filters)
        self.config = {
            "input_channels": input_channels, "n_filters": n_filters, "fsm_reduction": fsm_reduction,
            "fsm_similarity": fsm_similarity, "activation_func": activation_func, "use_batch_norm": use_batch_norm,
            "weight_initializer": weight_initializer, "padding_mode": padding_mode, "keras_release": keras_release,
        }
        validate_xnet_config(input_channels, n_filters, fsm_reduction, fsm_similarity, use_batch_norm)
        validate_common_options(activation_func, weight_initializer)
        validate_padding_mode(padding_mode)
        self.padding_mode = padding_mode
        self.in_channels = input_channels
        self.n_stages = len(n_filters)
        activation, batch_norm = activation_func, use_batch_norm

        encoder_in_channels = [input_channels] + n_filters[:-1]
        self.encoder = nn.ModuleList(
            XBlock(block_in, block_out, activation, batch_norm)
            for block_in, block_out in zip(encoder_in_channels, n_filters)
        )
        self.feature_similarity = FeatureSimilarityModule(
            n_filters[-1], activation, batch_norm, fsm_reduction, fsm_similarity
        )
        # Decoder stages, coarse to fine: each returns to the channels of the encoder stage it joins.
        self.decoder = nn.ModuleList(
            XNetDecoderStage(n_filters[index + 1], n_filters[index], n_filters[index], activation, batch_norm)
            for index in reversed(range(self.n_stages - 1))
        )
        self.output = nn.Conv2d(n_filters[0], 1, kernel_size=1, bias=True)
        if keras_release:
            use_keras_arithmetic(self)
            for module in self.modules():
                if isinstance(module, Conv2dBlock):
                    add_zero_bias(module.conv)
        initialize_weights(self, weight_initializer)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns {"logits": (B, 1, H, W)}."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"XNet expects (B, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        size = x.shape[-2:]
        x = pad_to_multiple(x, 2 ** (self.n_stages - 1), self.padding_mode)
        skips = []
        for index, stage in enumerate(self.encoder):
            if index > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            x = stage(x)
            skips.append(x)
        x = self.feature_similarity(skips.pop())
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return {"logits": crop_to_size(self.output(x), size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> logits (B, 1, H, W)."""
        return self.forward_all(x)["logits"]


def validate_xnet_config(
    input_channels: int, n_filters: list[int], fsm_reduction: int, fsm_similarity: str, use_batch_norm: bool
) -> None:
    """Raises ``ValueError`` for a configuration XNet cannot build."""
    if not isinstance(input_channels, int) or isinstance(input_channels, bool) or input_channels < 1:
        raise ValueError(f"input_channels must be an integer >= 1, got {input_channels!r}")
    if len(n_filters) < 2:
        raise ValueError(f"n_filters needs at least 2 stages, got {n_filters!r}")
    for value in n_filters:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"n_filters must hold integers >= 1, got {value!r}")
    if not isinstance(fsm_reduction, int) or isinstance(fsm_reduction, bool) or fsm_reduction < 1:
        raise ValueError(f"fsm_reduction must be an integer >= 1, got {fsm_reduction!r}")
    if not isinstance(use_batch_norm, bool):
        raise ValueError(f"use_batch_norm must be a bool, got {use_batch_norm!r}")
    if fsm_similarity not in SIMILARITY_MODES:
        raise ValueError(f"fsm_similarity must be one of {SIMILARITY_MODES}, got {fsm_similarity!r}")
