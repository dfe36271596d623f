"""CLCI-Net: cross-level fusion and context inference network (Yang et al., MICCAI 2019), a SPiN baseline.

Data flow for x of shape (B, C, H, W) (C = 1 slice in the paper), filters f = (32, 64, 128, 256, 512):

1. Encoder with cross-level feature fusion (CLF): level 1 is a double convolution at H x W. Before
   level k + 1 (k = 1..4) every finer level j <= k is brought to H / 2**k by a strided 3x3
   convolution (stride 2**(k - j + 1), f[k-1] filters), concatenated with the 2x2 max-pool of
   level k and fused by a 1x1 convolution to 4 * f[k] channels, followed by level k + 1's double
   convolution (f[k] filters). Dropout 0.5 after level 5 (H / 16).
2. CLF-ASPP at H / 16: a 1x1 branch, three dilated 3x3 branches (rates 2, 4, 6), an image-pooling
   branch and one strided 3x3 convolution from each of levels 1-4, all 256 filters, concatenated
   and fused by a 1x1 convolution to 1024 channels, dropout 0.5.
3. Decoder with context inference, for levels 4 -> 1: 2x upsampling and a 2x2 convolution to f[k]
   channels, a 1x1 convolution of the encoder skip to f[k] channels, a ConvLSTM (3x3, f[k] hidden
   channels) over the two-step sequence [upsampled, skip] whose last hidden state goes through a
   double convolution. A 1x1 convolution gives the logits (the paper applies a sigmoid).

Filters, dilation rates, strides and dropout follow the authors' Keras release.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import RemembersConfig
from .blocks import activation_from_name, initialize_weights
from .layers_extra import (
    ConvLSTM2d,
    ConvNormActivation,
    DoubleConv,
    crop_to_size,
    pad_to_multiple,
    use_keras_arithmetic,
    validate_common_options,
    validate_padding_mode,
    validate_positive_ints,
)

# Four 2x poolings (and strided convolutions up to stride 16): inputs are padded to a multiple of 16.
DOWNSAMPLING_FACTOR = 16


class CrossLevelDownsampling(nn.Module):
    """CLF before encoder level k + 1: levels 1..k (finest first) -> (B, fusion_channels, H / 2**k, W / 2**k).

    Level j (at H / 2**(j-1)) goes through a 3x3 convolution with stride 2**(k - j + 1); the results
    and the 2x2 max-pool of level k are concatenated and fused by a 1x1 convolution.
    """

    def __init__(
        self,
        level_channels: Sequence[int],
        filters: int,
        fusion_channels: int,
        activation: str,
        use_batch_norm: bool,
    ):
        super().__init__()
        n_levels = len(level_channels)
        self.downsamplers = nn.ModuleList(
            ConvNormActivation(channels, filters, 3, 2 ** (n_levels - index), 1, activation, use_batch_norm)
            for index, channels in enumerate(level_channels)
        )
        self.pool = nn.MaxPool2d(kernel_size=2)
        concatenated = n_levels * filters + level_channels[-1]
        self.fusion = ConvNormActivation(concatenated, fusion_channels, 1, 1, 1, activation, use_batch_norm)
        # The Keras release concatenates the coarsest level's convolution first: [k, ..., 1, pool].
        self.coarsest_first = False

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        downsampled = [downsampler(level) for downsampler, level in zip(self.downsamplers, levels)]
        if self.coarsest_first:
            downsampled.reverse()
        return self.fusion(torch.cat(downsampled + [self.pool(levels[-1])], dim=1))


class CrossLevelASPP(nn.Module):
    """ASPP extended with CLF: bottleneck (B, C5, h, w) + levels 1-4 -> (B, output_channels, h, w).

    Branches: 1x1 convolution, dilated 3x3 convolutions, image pooling (global average, 1x1
    convolution, broadcast back to h x w) and a strided 3x3 convolution from each encoder level
    (stride h_level / h); concatenated, fused by a 1x1 convolution, then dropout.
    The image-pooling branch has a bias instead of batch norm: a 1x1 map cannot be batch
    normalised with batch size 1 in training (the release uses batch norm there, which
    ``image_pooling_batch_norm=True`` restores).
    """

    def __init__(
        self,
        in_channels: int,
        level_channels: Sequence[int],
        filters: int,
        dilation_rates: Sequence[int],
        output_channels: int,
        dropout_rate: float,
        activation: str,
        use_batch_norm: bool,
        image_pooling_batch_norm: bool = False,
    ):
        super().__init__()
        self.pointwise = ConvNormActivation(in_channels, filters, 1, 1, 1, activation, use_batch_norm)
        self.dilated = nn.ModuleList(
            ConvNormActivation(in_channels, filters, 3, 1, rate, activation, use_batch_norm) for rate in dilation_rates
        )
        self.image_pooling = ConvNormActivation(in_channels, filters, 1, 1, 1, activation, image_pooling_batch_norm)
        n_levels = len(level_channels)
        self.cross_level = nn.ModuleList(
            ConvNormActivation(channels, filters, 3, 2 ** (n_levels - index), 1, activation, use_batch_norm)
            for index, channels in enumerate(level_channels)
        )
        concatenated = filters * (2 + len(dilation_rates) + n_levels)
        self.fusion = ConvNormActivation(concatenated, output_channels, 1, 1, 1, activation, use_batch_norm)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        pooled = self.image_pooling(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        branches = [module(level) for module, level in zip(self.cross_level, levels)]
        branches += [self.pointwise(x)] + [module(x) for module in self.dilated] + [pooled]
        return self.dropout(self.fusion(torch.cat(branches, dim=1)))


class ContextInferenceDecoderLevel(nn.Module):
    """One decoder level: coarse (B, C_in, h, w) + skip (B, C_skip, 2h, 2w) -> (B, C, 2h, 2w).

    Upsampling + 2x2 convolution, 1x1 convolution of the skip, a ConvLSTM over [upsampled, skip]
    (context inference), then a double convolution.
    """

    def __init__(self, in_channels: int, skip_channels: int, channels: int, activation: str, use_batch_norm: bool):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_convolution = ConvNormActivation(in_channels, channels, 2, 1, 1, activation, use_batch_norm)
        self.skip_convolution = ConvNormActivation(skip_channels, channels, 1, 1, 1, activation, use_batch_norm)
        self.context_inference = ConvLSTM2d(channels, channels, kernel_size=3)
        self.convolutions = DoubleConv(channels, channels, activation, use_batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        upsampled = self.up_convolution(self.upsample(x))
        return self.convolutions(self.context_inference([upsampled, self.skip_convolution(skip)]))


class CLCINet(RemembersConfig):
    """CLCI-Net: x (B, input_channels, H, W) -> logits (B, 1, H, W), any H, W.

    Arguments (keyword only, defaults are the paper's / release's settings):
        input_channels: stacked slices (1).
        n_filters: encoder filters per level ((32, 64, 128, 256, 512)); the decoder mirrors levels 1-4.
        fusion_expansion: CLF fusion width is fusion_expansion * n_filters[k + 1] (4).
        aspp_filters: filters of every CLF-ASPP branch (256).
        aspp_dilation_rates: dilated 3x3 branches of CLF-ASPP ((2, 4, 6)).
        aspp_output_channels: width of the fused CLF-ASPP output (1024).
        dropout_rate: dropout after encoder level 5 and after CLF-ASPP (0.5).
        activation_func, use_batch_norm, weight_initializer: "relu", True, "kaiming_normal" (Keras' he_normal).
        padding_mode: how inputs are padded to a multiple of 16 before the network ("replicate"
            or "zeros"); the logits are cropped back, so any H, W works (197x233 -> 208x240).
        keras_release: False (what we train). True builds the authors' Keras model exactly, so its
            weights load (:mod:`spinseg.models.keras_weights`): a bias on every convolution, batch
            norm (epsilon 1e-3, not 1e-5) in the image-pooling branch too, TensorFlow's "same"
            padding (a 3x3 stride-2 convolution pads 0 before and 1 after, strides 4-16 pad
            nothing), ConvLSTM gates with Keras' hard_sigmoid, and each CLF's concatenation in the
            release's order [coarsest level's convolution, ..., finest's, max-pool].

    Parameters at defaults: 36,800,129 (the Keras release has 12,896 more trainable ones: the
    redundant biases of convolutions followed by batch norm, and batch norm in the image-pooling
    branch).
    """

    PARAMETER_COUNT_AT_DEFAULTS = 36_800_129

    def __init__(
        self,
        *,
        input_channels: int = 1,
        n_filters: Sequence[int] = (32, 64, 128, 256, 512),
        fusion_expansion: int = 4,
        aspp_filters: int = 256,
        aspp_dilation_rates: Sequence[int] = (2, 4, 6),
        aspp_output_channels: int = 1024,
        dropout_rate: float = 0.5,
        activation_func: str = "relu",
        use_batch_norm: bool = True,
        weight_initializer: str = "kaiming_normal",
        padding_mode: str = "replicate",
        keras_release: bool = False,
    ):
        super().__init__()
        if not isinstance(input_channels, int) or input_channels < 1:
            raise ValueError(f"input_channels must be a positive integer, got {input_channels!r}")
        validate_positive_ints("n_filters", n_filters, 5)
        validate_positive_ints("fusion_expansion", [fusion_expansion], 1)
        validate_positive_ints("aspp_filters", [aspp_filters], 1)
        validate_positive_ints("aspp_dilation_rates", aspp_dilation_rates, len(aspp_dilation_rates))
        validate_positive_ints("aspp_output_channels", [aspp_output_channels], 1)
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
        validate_common_options(activation_func, weight_initializer)
        validate_padding_mode(padding_mode)
        self.config = {
            "input_channels": input_channels,
            "n_filters": list(n_filters),
            "fusion_expansion": fusion_expansion,
            "aspp_filters": aspp_filters,
            "aspp_dilation_rates": list(aspp_dilation_rates),
            "aspp_output_channels": aspp_output_channels,
            "dropout_rate": dropout_rate,
            "activation_func": activation_func,
            "use_batch_norm": use_batch_norm,
            "weight_initializer": weight_initializer,
            "padding_mode": padding_mode,
            "keras_release": keras_release,
        }
        self.in_channels = input_channels
        self.padding_mode = padding_mode
        activation, batch_norm = activation_func, use_batch_norm

        # Encoder: level k + 1 convolves the CLF of levels 1..k (4 * n_filters[k] channels).
        self.encoder_levels = nn.ModuleList([DoubleConv(input_channels, n_filters[0], activation, batch_norm)])
        self.cross_level_fusions = nn.ModuleList()
        for level in range(1, 5):
            fusion_channels = fusion_expansion * n_filters[level]
            self.cross_level_fusions.append(
                CrossLevelDownsampling(n_filters[:level], n_filters[level - 1], fusion_channels, activation, batch_norm)
            )
            self.encoder_levels.append(DoubleConv(fusion_channels, n_filters[level], activation, batch_norm))
        self.dropout = nn.Dropout(dropout_rate)
        self.aspp = CrossLevelASPP(
            n_filters[4],
            n_filters[:4],
            aspp_filters,
            aspp_dilation_rates,
            aspp_output_channels,
            dropout_rate,
            activation,
            batch_norm,
            image_pooling_batch_norm=keras_release and batch_norm,
        )

        # Decoder, coarsest first.
        self.decoder_levels = nn.ModuleList()
        in_channels = aspp_output_channels
        for filters in reversed(n_filters[:4]):
            self.decoder_levels.append(ContextInferenceDecoderLevel(in_channels, filters, filters, activation, batch_norm))
            in_channels = filters
        self.output = nn.Conv2d(n_filters[0], 1, kernel_size=1)
        if keras_release:
            use_keras_arithmetic(self)
            for fusion in self.cross_level_fusions:
                fusion.coarsest_first = True
        initialize_weights(self, weight_initializer)
        for module in self.modules():
            if isinstance(module, ConvLSTM2d):
                module.reset_forget_bias()

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, in_channels, H, W) -> {"logits": (B, 1, H, W)}."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"CLCINet expects {self.in_channels} input channels, got {x.shape[1]}")
        size = x.shape[-2:]
        x = pad_to_multiple(x, DOWNSAMPLING_FACTOR, self.padding_mode)

        levels = [self.encoder_levels[0](x)]
        for fusion, encoder_level in zip(self.cross_level_fusions, self.encoder_levels[1:]):
            levels.append(encoder_level(fusion(levels)))
        latent = self.aspp(self.dropout(levels[4]), levels[:4])

        features = latent
        for decoder_level, skip in zip(self.decoder_levels, reversed(levels[:4])):
            features = decoder_level(features, skip)
        return {"logits": crop_to_size(self.output(features), size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> logits (B, 1, H, W)."""
        return self.forward_all(x)["logits"]
