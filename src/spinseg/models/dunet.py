"""D-UNet: a dimension-fusion U-shaped network (Zhou et al., IEEE/ACM TCBB 2019), a SPiN baseline.

Data flow for x of shape (B, S, H, W), S = stacked adjacent axial slices (4 in the paper):

1. A 3-D branch sees x as a volume (B, 1, S, H, W): three 3-D double-convolution blocks
   (32, 64, 128 filters) separated by 2x2x2 max-pooling, so the slice axis shrinks 4 -> 2 -> 1
   while the image halves like the 2-D encoder's.
2. A 2-D U-Net encoder (32-64-128-256-512 double convolutions, 2x2 max-pooling, dropout 0.3 on
   the two deepest levels) sees the slices as channels.
3. At encoder levels 2 and 3 a *dimension fusion block* merges the 3-D features: the *dimension
   transform* (1x1x1 convolution to one channel, slice axis becomes channels, 3x3 convolution
   with ReLU) is squeeze-and-excitation weighted and added to the SE-weighted 2-D features.
4. A U-Net decoder: 2x upsampling, 2x2 convolution (ReLU), concatenation with the encoder skip,
   double convolution; a 1x1 convolution gives the logits (the paper applies a sigmoid).

The layer counts, filters, fusion levels, dropout and SE ratio follow the authors' Keras release.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import RemembersConfig
from .blocks import activation_from_name, initialize_weights
from .layers_extra import (
    ConvNormActivation,
    DoubleConv,
    SqueezeExcitation,
    crop_to_size,
    pad_to_multiple,
    use_keras_arithmetic,
    validate_common_options,
    validate_padding_mode,
    validate_positive_ints,
)

# Four 2x poolings in the 2-D encoder: inputs are padded to a multiple of 2**4.
DOWNSAMPLING_FACTOR = 16


def pooled_depth(depth: int) -> tuple[int, int]:
    """(depth kernel, depth after pooling) for a 3-D max-pool: halve the slice axis while it can."""
    kernel = 2 if depth >= 2 else 1
    return kernel, depth // kernel


class DimensionFusion(nn.Module):
    """Dimension transform + SE-weighted addition: 3-D (B, C3, D, h, w) and 2-D (B, C, h, w) -> (B, C, h, w).

    The 3-D features go through a 1x1x1 convolution to one channel, the slice axis D becomes the
    channel axis, and a 3x3 convolution with activation lifts them to C channels; both branches
    are squeeze-and-excitation weighted, then added (the release's ``D_SE_Add``). As in the
    release, the transform's convolutions have biases and no batch norm.
    """

    def __init__(self, channels_3d: int, depth: int, channels: int, activation: str, ratio: int):
        super().__init__()
        self.reduce_channels = nn.Conv3d(channels_3d, 1, kernel_size=1)
        self.transform = nn.Conv2d(depth, channels, kernel_size=3, padding=1)
        self.activation = activation_from_name(activation)
        self.excitation_3d = SqueezeExcitation(channels, ratio)
        self.excitation_2d = SqueezeExcitation(channels, ratio)

    def forward(self, features_3d: torch.Tensor, features_2d: torch.Tensor) -> torch.Tensor:
        transformed = self.activation(self.transform(self.reduce_channels(features_3d).squeeze(1)))
        return self.excitation_3d(transformed) + self.excitation_2d(features_2d)


class UpConvolution(nn.Module):
    """2x nearest upsampling then a 2x2 convolution ("same", bias, activation, no batch norm).

    (B, C_in, h, w) -> (B, C_out, 2h, 2w), the release's ``Conv2D(f, 2)(UpSampling2D()(x))``.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: str):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = ConvNormActivation(in_channels, out_channels, 2, 1, 1, activation, use_batch_norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.upsample(x))


class DUNet(RemembersConfig):
    """D-UNet: x (B, input_channels, H, W) -> logits (B, 1, H, W), any H, W.

    Arguments (keyword only, defaults are the paper's / release's settings):
        input_channels: stacked adjacent slices, the depth of the 3-D branch (4).
        n_filters: 2-D encoder filters per level, the decoder mirrors levels 1-4 ((32, 64, 128, 256, 512)).
        n_filters_3d: 3-D branch filters per level ((32, 64, 128)); levels 2 and 3 are fused.
        dropout_rate: dropout after encoder levels 4 and 5 (0.3).
        squeeze_excitation_ratio: SE bottleneck ratio (16).
        activation_func, use_batch_norm, weight_initializer: "relu", True, "kaiming_normal" (Keras' he_normal).
        padding_mode: how inputs are padded to a multiple of 16 before the network ("replicate"
            or "zeros"); the logits are cropped back, so any H, W works (197x233 -> 208x240).
        keras_release: False (what we train). True builds the authors' Keras model exactly, so its
            weights load (:mod:`spinseg.models.keras_weights`): a bias on every convolution (Keras'
            default, even before batch norm) and batch-norm epsilon 1e-3 instead of 1e-5.

    Parameters at defaults: 8,629,987 (the Keras release has 3,392 more trainable ones: the
    redundant biases of convolutions followed by batch norm).
    """

    PARAMETER_COUNT_AT_DEFAULTS = 8_629_987

    def __init__(
        self,
        *,
        input_channels: int = 4,
        n_filters: Sequence[int] = (32, 64, 128, 256, 512),
        n_filters_3d: Sequence[int] = (32, 64, 128),
        dropout_rate: float = 0.3,
        squeeze_excitation_ratio: int = 16,
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
        validate_positive_ints("n_filters_3d", n_filters_3d, 3)
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
        if not isinstance(squeeze_excitation_ratio, int) or squeeze_excitation_ratio < 1:
            raise ValueError(f"squeeze_excitation_ratio must be a positive integer, got {squeeze_excitation_ratio!r}")
        validate_common_options(activation_func, weight_initializer)
        validate_padding_mode(padding_mode)
        self.config = {
            "input_channels": input_channels,
            "n_filters": list(n_filters),
            "n_filters_3d": list(n_filters_3d),
            "dropout_rate": dropout_rate,
            "squeeze_excitation_ratio": squeeze_excitation_ratio,
            "activation_func": activation_func,
            "use_batch_norm": use_batch_norm,
            "weight_initializer": weight_initializer,
            "padding_mode": padding_mode,
            "keras_release": keras_release,
        }
        self.in_channels = input_channels
        self.padding_mode = padding_mode
        activation, batch_norm = activation_func, use_batch_norm

        # 3-D branch; the slice axis is pooled only while it has at least 2 entries.
        depth_kernel_1, depth_2 = pooled_depth(input_channels)
        depth_kernel_2, depth_3 = pooled_depth(depth_2)
        self.encoder_3d_level1 = DoubleConv(1, n_filters_3d[0], activation, batch_norm, dimensions=3)
        self.pool_3d_level1 = nn.MaxPool3d(kernel_size=(depth_kernel_1, 2, 2))
        self.encoder_3d_level2 = DoubleConv(n_filters_3d[0], n_filters_3d[1], activation, batch_norm, dimensions=3)
        self.pool_3d_level2 = nn.MaxPool3d(kernel_size=(depth_kernel_2, 2, 2))
        self.encoder_3d_level3 = DoubleConv(n_filters_3d[1], n_filters_3d[2], activation, batch_norm, dimensions=3)

        # 2-D encoder.
        self.encoder_levels = nn.ModuleList()
        in_channels = input_channels
        for filters in n_filters:
            self.encoder_levels.append(DoubleConv(in_channels, filters, activation, batch_norm))
            in_channels = filters
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.dropout = nn.Dropout(dropout_rate)
        self.fusion_level2 = DimensionFusion(n_filters_3d[1], depth_2, n_filters[1], activation, squeeze_excitation_ratio)
        self.fusion_level3 = DimensionFusion(n_filters_3d[2], depth_3, n_filters[2], activation, squeeze_excitation_ratio)

        # Decoder, coarsest first: up-convolve to the skip's width, concatenate, double convolution.
        self.up_convolutions = nn.ModuleList()
        self.decoder_levels = nn.ModuleList()
        in_channels = n_filters[4]
        for filters in reversed(n_filters[:4]):
            self.up_convolutions.append(UpConvolution(in_channels, filters, activation))
            self.decoder_levels.append(DoubleConv(2 * filters, filters, activation, batch_norm))
            in_channels = filters
        self.output = nn.Conv2d(n_filters[0], 1, kernel_size=1)
        if keras_release:
            use_keras_arithmetic(self)
        initialize_weights(self, weight_initializer)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, in_channels, H, W) -> {"logits": (B, 1, H, W)}."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"DUNet expects {self.in_channels} input channels, got {x.shape[1]}")
        size = x.shape[-2:]
        x = pad_to_multiple(x, DOWNSAMPLING_FACTOR, self.padding_mode)

        volume_level1 = self.encoder_3d_level1(x.unsqueeze(1))
        volume_level2 = self.encoder_3d_level2(self.pool_3d_level1(volume_level1))
        volume_level3 = self.encoder_3d_level3(self.pool_3d_level2(volume_level2))

        level1 = self.encoder_levels[0](x)
        level2 = self.fusion_level2(volume_level2, self.encoder_levels[1](self.pool(level1)))
        level3 = self.fusion_level3(volume_level3, self.encoder_levels[2](self.pool(level2)))
        level4 = self.dropout(self.encoder_levels[3](self.pool(level3)))
        latent = self.dropout(self.encoder_levels[4](self.pool(level4)))

        features = latent
        for up_convolution, decoder_level, skip in zip(
            self.up_convolutions, self.decoder_levels, (level4, level3, level2, level1)
        ):
            features = decoder_level(torch.cat([skip, up_convolution(features)], dim=1))
        return {"logits": crop_to_size(self.output(features), size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> logits (B, 1, H, W)."""
        return self.forward_all(x)["logits"]
