"""KiU-Net (Valanarasu et al., MICCAI 2020): an over-complete Kite-Net fused with a U-Net, 2-D version.

Data flow for an input x of shape (B, C, H, W), padded to (H', W'), multiples of 2**L (L levels):

1. Two encoders run side by side. The U-Net branch convolves then max-pools (H' / 2**l at level l);
   the Kite-Net branch convolves then upsamples bilinearly (H' * 2**l), so its receptive field stays
   small and it keeps the fine detail of small lesions.
2. After every encoder level, and after every decoder level but the last, a cross-residual fusion
   block (CRFB) adds each branch's convolved features, resized to the other's scale, to the other.
3. The decoders mirror the encoders (U-Net: conv + upsample, Kite-Net: conv + max-pool) and add the
   encoder features of the same level (skip additions, not concatenations, as in the paper).
4. Both branches end at H' x W' with ``n_filters_output`` channels; their sum goes through a 1x1
   convolution to one logit channel, which is cropped back to H x W.

The Kite-Net's deepest level runs at 2**L times the input resolution: with the defaults a 197 x 233
slice (padded to 200 x 240) gives 64-channel maps of 1600 x 1920, see :class:`KiUNet` for the cost.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import RemembersConfig
from .blocks import Conv2dBlock, activation_from_name, initialize_weights
from .layers_extra import add_zero_bias, crop_to_size, pad_to_multiple, validate_common_options, validate_padding_mode

RESAMPLE_MODES = ("down", "up")


class ConvResampleBlock(nn.Module):
    """3x3 convolution (no bias), 2x resampling, batch norm, activation.

    "down": (B, C_in, H, W) -> (B, C_out, H / 2, W / 2) by max-pooling; "up": -> (B, C_out, 2H, 2W)
    by bilinear upsampling. The resampling sits between convolution and normalisation as in the
    paper's code, so the convolution of an up block runs at the cheaper, lower resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, resample: str, activation: str, use_batch_norm: bool):
        super().__init__()
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        self.resample = resample
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels) if use_batch_norm else None
        self.activation = activation_from_name(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.resample == "down":
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        return self.activation(x)


class CrossResidualFusionBlock(nn.Module):
    """CRFB: exchanges features between the U-Net and Kite-Net branches at one level.

    ``unet`` (B, C, h, w) and ``kite`` (B, C, H, W) -> the same shapes. Each branch is convolved
    (3x3 conv, batch norm, activation) at its own scale, resized bilinearly to the other branch's
    size and added to it; both additions use the inputs, not each other's results.
    """

    def __init__(self, channels: int, activation: str, use_batch_norm: bool):
        super().__init__()
        self.kite_to_unet = Conv2dBlock(channels, channels, 3, 1, activation, use_batch_norm)
        self.unet_to_kite = Conv2dBlock(channels, channels, 3, 1, activation, use_batch_norm)

    def forward(self, unet: torch.Tensor, kite: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from_kite = F.interpolate(self.kite_to_unet(kite), size=unet.shape[-2:], mode="bilinear", align_corners=False)
        from_unet = F.interpolate(self.unet_to_kite(unet), size=kite.shape[-2:], mode="bilinear", align_corners=False)
        return unet + from_kite, kite + from_unet


class KiUNet(RemembersConfig):
    """KiU-Net 2-D: x (B, in_channels, H, W) -> logits (B, 1, H, W) for any H, W.

    Keyword arguments (defaults = the paper's 2-D KiU-Net):
        input_channels: stacked slices per input, 1.
        n_filters: channels per level, coarse-to-fine depth L = len(n_filters), (16, 32, 64).
        n_filters_output: channels of the last decoder level of both branches, 8.
        activation_func: "relu" (any name :func:`activation_from_name` knows).
        use_batch_norm: True.
        weight_initializer: "default" (PyTorch's own, as the paper's code; see :func:`initialize_weights`).
        padding_mode: how inputs are padded to a multiple of 2**L ("replicate" or "zeros").
        release_exact: False (what we train). True builds the release's ``kiunet`` class so its
            ``state_dict`` loads (:func:`release_state_dict_to_port`): a bias on every convolution and
            a 2-channel final 1x1 convolution followed by ReLU, as the release; the one logit is
            then channel 1 minus channel 0, so its sigmoid is the release's softmax of channel 1.

    Parameters at defaults: 215,881 (bias-free convolutions before batch norm, a biased 1x1 output;
    the paper's code adds biases and two unused 64-channel CRFB convolutions).

    ``forward`` pads H and W evenly up to multiples of 2**L (8 by default: 197 x 233 -> 200 x 240)
    so the branches' 2x resampling and the CRFBs' resizing are exact, and crops the logits back.

    Cost at 197 x 233, batch 1, 2 CPU cores (the Kite-Net's last level is 64 x 1600 x 1920): about
    6 s and 2.6 GiB peak memory for a forward pass without gradients, 20 s and 7 GiB for forward +
    backward. Fewer levels (e.g. ``n_filters=(16, 32)``) cut this by about 8x.
    """

    PARAMETER_COUNT_AT_DEFAULTS = 215_881

    def __init__(
        self,
        *,
        input_channels: int = 1,
        n_filters: Sequence[int] = (16, 32, 64),
        n_filters_output: int = 8,
        activation_func: str = "relu",
        use_batch_norm: bool = True,
        weight_initializer: str = "default",
        padding_mode: str = "replicate",
        release_exact: bool = False,
    ):
        super().__init__()
        n_filters = list(n_filters)
        validate_kiunet_config(input_channels, n_filters, n_filters_output, use_batch_norm)
        validate_common_options(activation_func, weight_initializer)
        validate_padding_mode(padding_mode)
        self.padding_mode = padding_mode
        self.in_channels = input_channels
        self.n_levels = len(n_filters)
        self.release_exact = release_exact
        self.config = {
            "input_channels": input_channels, "n_filters": n_filters, "n_filters_output": n_filters_output,
            "activation_func": activation_func, "use_batch_norm": use_batch_norm,
            "weight_initializer": weight_initializer, "padding_mode": padding_mode, "release_exact": release_exact,
        }
        activation, batch_norm = activation_func, use_batch_norm

        encoder_in_channels = [input_channels] + n_filters[:-1]
        self.unet_encoder = nn.ModuleList(
            ConvResampleBlock(block_in, block_out, "down", activation, batch_norm)
            for block_in, block_out in zip(encoder_in_channels, n_filters)
        )
        self.kite_encoder = nn.ModuleList(
            ConvResampleBlock(block_in, block_out, "up", activation, batch_norm)
            for block_in, block_out in zip(encoder_in_channels, n_filters)
        )
        self.encoder_fusion = nn.ModuleList(
            CrossResidualFusionBlock(channels, activation, batch_norm) for channels in n_filters
        )

        # Each decoder level but the last outputs the channels of the encoder skip it is added to.
        decoder_out_channels = list(reversed(n_filters[:-1])) + [n_filters_output]
        decoder_in_channels = [n_filters[-1]] + decoder_out_channels[:-1]
        self.unet_decoder = nn.ModuleList(
            ConvResampleBlock(block_in, block_out, "up", activation, batch_norm)
            for block_in, block_out in zip(decoder_in_channels, decoder_out_channels)
        )
        self.kite_decoder = nn.ModuleList(
            ConvResampleBlock(block_in, block_out, "down", activation, batch_norm)
            for block_in, block_out in zip(decoder_in_channels, decoder_out_channels)
        )
        self.decoder_fusion = nn.ModuleList(
            CrossResidualFusionBlock(channels, activation, batch_norm) for channels in decoder_out_channels[:-1]
        )
        self.output = nn.Conv2d(n_filters_output, 2 if release_exact else 1, kernel_size=1, bias=True)
        if release_exact:
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    add_zero_bias(module)
        initialize_weights(self, weight_initializer)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns {"logits": (B, 1, H, W)}."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"KiUNet expects (B, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        size = x.shape[-2:]
        x = pad_to_multiple(x, 2**self.n_levels, self.padding_mode)
        unet, kite = x, x
        skips = []
        for level in range(self.n_levels):
            unet = self.unet_encoder[level](unet)
            kite = self.kite_encoder[level](kite)
            unet, kite = self.encoder_fusion[level](unet, kite)
            skips.append((unet, kite))
        # The deepest level's output is the decoder input, not a skip.
        skips.pop()
        for level in range(self.n_levels):
            unet = self.unet_decoder[level](unet)
            kite = self.kite_decoder[level](kite)
            if level < self.n_levels - 1:
                unet, kite = self.decoder_fusion[level](unet, kite)
                skip_unet, skip_kite = skips.pop()
                unet = unet + skip_unet
                kite = kite + skip_kite
        logits = self.output(unet + kite)
        if self.release_exact:
            # softmax([a, b])[1] = sigmoid(b - a): one logit with the release's probability.
            scores = F.relu(logits)
            logits = scores[:, 1:2] - scores[:, 0:1]
        return {"logits": crop_to_size(logits, size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> logits (B, 1, H, W)."""
        return self.forward_all(x)["logits"]


def validate_kiunet_config(
    input_channels: int, n_filters: list[int], n_filters_output: int, use_batch_norm: bool
) -> None:
    """Raises ``ValueError`` for a configuration KiUNet cannot build."""
    if not isinstance(input_channels, int) or isinstance(input_channels, bool) or input_channels < 1:
        raise ValueError(f"input_channels must be an integer >= 1, got {input_channels!r}")
    if not n_filters:
        raise ValueError("n_filters needs at least one level")
    for value in [*n_filters, n_filters_output]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"n_filters and n_filters_output must be integers >= 1, got {value!r}")
    if not isinstance(use_batch_norm, bool):
        raise ValueError(f"use_batch_norm must be a bool, got {use_batch_norm!r}")


# The release's attribute prefixes (``arch/ae.py``, class ``kiunet``) -> ours, per level l = 1, 2, 3.
RELEASE_PREFIXES = {
    "encoder{l}.": "unet_encoder.{i}.conv.", "en{l}_bn.": "unet_encoder.{i}.batch_norm.",
    "encoderf{l}.": "kite_encoder.{i}.conv.", "enf{l}_bn.": "kite_encoder.{i}.batch_norm.",
    "intere{l}_1.": "encoder_fusion.{i}.kite_to_unet.conv.", "inte{l}_1bn.": "encoder_fusion.{i}.kite_to_unet.batch_norm.",
    "intere{l}_2.": "encoder_fusion.{i}.unet_to_kite.conv.", "inte{l}_2bn.": "encoder_fusion.{i}.unet_to_kite.batch_norm.",
    "decoder{l}.": "unet_decoder.{i}.conv.", "de{l}_bn.": "unet_decoder.{i}.batch_norm.",
    "decoderf{l}.": "kite_decoder.{i}.conv.", "def{l}_bn.": "kite_decoder.{i}.batch_norm.",
    "interd{l}_1.": "decoder_fusion.{i}.kite_to_unet.conv.", "intd{l}_1bn.": "decoder_fusion.{i}.kite_to_unet.batch_norm.",
    "interd{l}_2.": "decoder_fusion.{i}.unet_to_kite.conv.", "intd{l}_2bn.": "decoder_fusion.{i}.unet_to_kite.batch_norm.",
}
RELEASE_LEVELS = 3


def is_release_state_dict(state_dict: dict) -> bool:
    """True for ``torch.save(kiunet().state_dict())`` of the release (its own key names)."""
    return {"encoder1.weight", "encoderf1.weight", "intere1_1.weight", "final.weight"} <= set(state_dict)


def release_state_dict_to_port(state_dict: dict) -> dict:
    """Renames the release's KiU-Net state dict to :class:`KiUNet` keys (``release_exact=True``).

    The release builds decoder fusion convolutions at its third level (``interd3_*``, ``intd3_*``)
    that its forward never uses; they are dropped. Any other key is kept as it is, so a strict
    load reports it.
    """
    renamed = {}
    for key, value in state_dict.items():
        new_key = key.replace("final.", "output.", 1) if key.startswith("final.") else key
        for level in range(1, RELEASE_LEVELS + 1):
            for release, ours in RELEASE_PREFIXES.items():
                prefix = release.format(l=level)
                if key.startswith(prefix):
                    new_key = ours.format(i=level - 1) + key[len(prefix):]
        if new_key.startswith(f"decoder_fusion.{RELEASE_LEVELS - 1}."):
            continue  # the unused level-3 decoder fusion
        renamed[new_key] = value
    return renamed
