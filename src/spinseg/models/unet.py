"""The release's in-house U-Net baseline: VGG-13-style encoder, generic decoder, one input slice.

The release is inconsistent about its encoder: the evaluation recipe that scored the published
checkpoint builds 64-128-256-512-1024 filters (31,385,216 parameters, our default), its training
recipe 64-128-256-512-512 (19,586,688 parameters, ``UNet.TRAIN_RECIPE_FILTERS``). Both load the
release's checkpoint format (``encoder_segmentation_state_dict`` + ``decoder_segmentation_state_dict``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ReleaseSubnetworks, RemembersConfig
from .blocks import Conv2dBlock, DecoderBlock, initialize_weights

SUBNETWORK_NAMES = ("encoder_segmentation", "decoder_segmentation")


class VGGBlock(nn.Module):
    """``n_convolutions`` 3x3 convolution blocks; the last one applies ``stride``.

    (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, n_convolutions: int, stride: int, activation: str, use_batch_norm: bool):
        super().__init__()
        layers = []
        for index in range(n_convolutions):
            last = index == n_convolutions - 1
            layers.append(Conv2dBlock(in_channels, out_channels, 3, stride if last else 1, activation, use_batch_norm))
            in_channels = out_channels
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x)


class VGG13Encoder(nn.Module):
    """VGG-13-style encoder: (B, C, H, W) -> latent at H/32 and skips at H/2, H/4, H/8, H/16.

    As in the release's ``VGGNetEncoder``: the first stage is a 5x5 convolution with stride 1
    followed by one 3x3 convolution with stride 2 (so the 5x5 kernel sees the full-resolution
    image); every later stage has two 3x3 convolutions, the second with stride 2.
    """

    def __init__(self, in_channels: int, n_filters: Sequence[int], activation: str, use_batch_norm: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            Conv2dBlock(in_channels, n_filters[0], 5, 1, activation, use_batch_norm),
            VGGBlock(n_filters[0], n_filters[0], 1, 2, activation, use_batch_norm),
        )
        stages = [VGGBlock(n_filters[i - 1], n_filters[i], 2, 2, activation, use_batch_norm) for i in range(1, 5)]
        self.conv2, self.conv3, self.conv4, self.conv5 = stages

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = stage(x)
            skips.append(x)
        return self.conv5(x), skips


class GenericDecoder(nn.Module):
    """Four upsample-concatenate-convolve blocks and a linear 3x3 output: logits at the finest skip's size."""

    def __init__(self, latent_channels: int, skip_channels: Sequence[int], n_filters: Sequence[int], activation: str, use_batch_norm: bool):
        super().__init__()
        in_channels = latent_channels
        blocks = []
        for skip, filters in zip(reversed(skip_channels), n_filters):
            blocks.append(DecoderBlock(in_channels, skip, filters, activation, use_batch_norm))
            in_channels = filters
        self.deconv4, self.deconv3, self.deconv2, self.deconv1 = blocks
        self.output = Conv2dBlock(in_channels, 1, 3, 1, None, False)

    def forward(self, latent: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = latent
        for block, skip in zip((self.deconv4, self.deconv3, self.deconv2, self.deconv1), reversed(skips)):
            x = block(x, skip)
        return self.output(x)


class UNet(ReleaseSubnetworks, RemembersConfig):
    """Release U-Net: x (B, C, H, W) -> logits (B, 1, H, W); predicts at H/2 and upsamples bilinearly."""

    RELEASE_SUBNETWORKS = SUBNETWORK_NAMES

    PUBLISHED_FILTERS = (64, 128, 256, 512, 1024)
    TRAIN_RECIPE_FILTERS = (64, 128, 256, 512, 512)

    def __init__(
        self,
        input_channels: int = 1,
        n_filters_encoder_segmentation: Sequence[int] = PUBLISHED_FILTERS,
        n_filters_decoder_segmentation: Sequence[int] = (512, 256, 128, 64),
        encoder_type_segmentation: Sequence[str] = ("vggnet13",),
        decoder_type_segmentation: Sequence[str] = ("generic",),
        weight_initializer: str = "kaiming_uniform",
        activation_func: str = "leaky_relu",
        use_batch_norm: bool = True,
        input_channels_segmentation: int | None = None,
    ):
        super().__init__()
        # The release names the input width input_channels_segmentation for this network.
        if input_channels_segmentation is not None:
            input_channels = input_channels_segmentation
        if input_channels < 1:
            raise ValueError(f"input_channels must be >= 1, got {input_channels}")
        if len(n_filters_encoder_segmentation) != 5 or len(n_filters_decoder_segmentation) != 4:
            raise ValueError("U-Net needs 5 encoder and 4 decoder filter counts")
        if list(encoder_type_segmentation)[:1] != ["vggnet13"] or list(decoder_type_segmentation)[:1] != ["generic"]:
            raise ValueError("U-Net supports encoder 'vggnet13' with decoder 'generic' only")
        self.in_channels = input_channels
        self.config = {
            "input_channels": input_channels,
            "n_filters_encoder_segmentation": list(n_filters_encoder_segmentation),
            "n_filters_decoder_segmentation": list(n_filters_decoder_segmentation),
            "weight_initializer": weight_initializer,
            "activation_func": activation_func,
            "use_batch_norm": use_batch_norm,
        }
        filters = list(n_filters_encoder_segmentation)
        self.encoder_segmentation = VGG13Encoder(input_channels, filters, activation_func, use_batch_norm)
        self.decoder_segmentation = GenericDecoder(
            filters[4], filters[:4], n_filters_decoder_segmentation, activation_func, use_batch_norm
        )
        initialize_weights(self, weight_initializer)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns {"logits": (B, 1, H, W), "logits_half": (B, 1, ceil(H/2), ceil(W/2))}."""
        latent, skips = self.encoder_segmentation(x)
        logits_half = self.decoder_segmentation(latent, skips)
        logits = F.interpolate(logits_half, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return {"logits": logits, "logits_half": logits_half}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> logits (B, 1, H, W)."""
        return self.forward_all(x)["logits"]

