"""SPiN: a segmentation network guided by a subpixel embedding (Wong et al., MICCAI BrainLes 2021).

Data flow for an input x of shape (B, C, H, W), C = number of stacked axial slices:

1. ``encoder_subpixel_embedding`` keeps full resolution; ``decoder_subpixel_embedding`` lifts it to
   (B, 8, 2H, 2W) by depth-to-space: the *subpixel embedding*.
2. ``subpixel_guidance`` brings the embedding to the decoder's two finest scales by space-to-depth
   (factor 2**r for resolution r, r = 0 is 2H, r = 1 is H) followed by a convolution.
3. ``encoder_segmentation`` (ResNet-18) and ``decoder_segmentation`` predict logits at 2H x 2W,
   concatenating the guidance at H and 2H, and the ``learnable_downsampler`` turns the 2H logits
   back into (B, 1, H, W) logits with a learned, softmax-weighted space-to-depth.

Module and attribute names follow the release, so its five state dicts load as they are.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

import torch
from torch import nn

from .base import ReleaseSubnetworks, RemembersConfig
from .blocks import (
    Conv2dBlock,
    DecoderBlock,
    ResidualBlock,
    depth_to_space,
    initialize_weights,
    residual_stage,
    space_to_depth,
)

RESNET_STAGE_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}

# The five sub-networks, in the order and with the key names of the release's checkpoints.
SUBNETWORK_NAMES = (
    "encoder_subpixel_embedding",
    "decoder_subpixel_embedding",
    "subpixel_guidance",
    "encoder_segmentation",
    "decoder_segmentation",
)


@dataclass
class SPiNConfig:
    """Constructor arguments of SPiN, with the release's names and the paper's values as defaults."""

    input_channels: int = 5
    encoder_type_subpixel_embedding: list[str] = field(default_factory=lambda: ["resnet5_subpixel_embedding"])
    n_filters_encoder_subpixel_embedding: list[int] = field(default_factory=lambda: [16, 16, 16])
    decoder_type_subpixel_embedding: list[str] = field(default_factory=lambda: ["subpixel"])
    output_channels_subpixel_embedding: int = 8
    n_filter_decoder_subpixel_embedding: int = 16
    output_func_subpixel_embedding: str = "linear"
    encoder_type_segmentation: list[str] = field(default_factory=lambda: ["resnet18"])
    n_filters_encoder_segmentation: list[int] = field(default_factory=lambda: [32, 64, 128, 196, 196])
    resolutions_subpixel_guidance: list[int] = field(default_factory=lambda: [0, 1])
    n_filters_subpixel_guidance: list[int] = field(default_factory=lambda: [8, 8])
    n_convolutions_subpixel_guidance: list[int] = field(default_factory=lambda: [1, 1])
    decoder_type_segmentation: list[str] = field(
        default_factory=lambda: ["subpixel_guidance", "learnable_downsampler"]
    )
    n_filters_decoder_segmentation: list[int] = field(default_factory=lambda: [196, 128, 64, 32, 16, 16])
    n_filters_learnable_downsampler: list[int] = field(default_factory=lambda: [16, 16])
    kernel_sizes_learnable_downsampler: list[int] = field(default_factory=lambda: [3, 3])
    weight_initializer: str = "kaiming_uniform"
    activation_func: str = "leaky_relu"
    use_batch_norm: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "SPiNConfig":
        """Builds a config from release-style keys; unknown keys raise ``ValueError`` naming them."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SPiN config keys: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict."""
        return asdict(self)


class SubpixelEmbeddingEncoder(nn.Module):
    """"resnet5_subpixel_embedding": full-resolution features, (B, C, H, W) -> (B, F, H, W).

    A 5x5 convolution, residual blocks and a 3x3 convolution whose output is added to the first
    convolution's output (a global residual), so fine detail from the input survives.
    """

    def __init__(self, in_channels: int, n_filters: Sequence[int], activation: str, use_batch_norm: bool):
        super().__init__()
        first, middle, last = n_filters
        self.conv0 = Conv2dBlock(in_channels, first, 5, 1, activation, use_batch_norm)
        self.blocks = nn.Sequential(
            ResidualBlock(first, middle, 1, activation, use_batch_norm),
            ResidualBlock(middle, middle, 1, activation, use_batch_norm),
        )
        self.conv1 = Conv2dBlock(middle, last, 3, 1, activation, use_batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.conv0(x)
        return self.conv1(self.blocks(stem)) + stem


class SubpixelEmbeddingDecoder(nn.Module):
    """Depth-to-space decoder: (B, F, H, W) -> subpixel embedding (B, C_out, 2H, 2W).

    A 1x1 convolution to 4 * n_filters channels, depth-to-space x2 to n_filters channels at
    2H x 2W, then a 3x3 convolution with a linear output.
    """

    def __init__(
        self,
        in_channels: int,
        n_filters: int,
        out_channels: int,
        output_activation: str,
        activation: str,
        use_batch_norm: bool,
        scale: int = 2,
    ):
        super().__init__()
        self.scale = scale
        self.upsampling_blocks = nn.ModuleList(
            [Conv2dBlock(in_channels, n_filters * scale * scale, 1, 1, activation, use_batch_norm)]
        )
        self.output = Conv2dBlock(n_filters, out_channels, 3, 1, output_activation, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.upsampling_blocks:
            x = depth_to_space(block(x), self.scale)
        return self.output(x)


class SubpixelGuidance(nn.Module):
    """Brings the 2H embedding to each guided decoder resolution by space-to-depth and convolution.

    For resolution r the embedding (B, E, 2H, 2W) becomes (B, E * 4**r, 2H / 2**r, 2W / 2**r),
    then ``n_convolutions[r]`` 3x3 convolutions with ``n_filters[r]`` channels.
    """

    def __init__(
        self,
        embedding_channels: int,
        resolutions: Sequence[int],
        n_filters: Sequence[int],
        n_convolutions: Sequence[int],
        activation: str,
        use_batch_norm: bool,
    ):
        super().__init__()
        self.resolutions = list(resolutions)
        # Space-to-depth factor applied before each module: 2**r, or 1 once the fast inference path
        # has folded it into the module's first convolution (spinseg.acceleration.inference).
        self.input_block_sizes = [2**resolution for resolution in self.resolutions]
        conv_modules = []
        for resolution, filters, n_conv in zip(resolutions, n_filters, n_convolutions):
            in_channels = embedding_channels * 4**resolution
            layers = []
            for _ in range(n_conv):
                layers.append(Conv2dBlock(in_channels, filters, 3, 1, activation, use_batch_norm))
                in_channels = filters
            conv_modules.append(nn.Sequential(*layers))
        self.conv_modules = nn.ModuleList(conv_modules)

    def forward(self, embedding: torch.Tensor) -> dict[int, torch.Tensor]:
        """Returns {resolution: (B, n_filters[r], 2H / 2**r, 2W / 2**r)}."""
        return {
            resolution: module(space_to_depth(embedding, block_size))
            for resolution, block_size, module in zip(self.resolutions, self.input_block_sizes, self.conv_modules)
        }


class ResNetEncoder(nn.Module):
    """ResNet encoder: (B, C, H, W) -> latent (B, F4, H/32, W/32) and four skips (H/2 ... H/16).

    A 7x7 stride-2 convolution, a 3x3 stride-2 max-pool, then four residual stages; every stage
    after the first halves the resolution. Sizes round up, e.g. 197 -> 99, 50, 25, 13, 7.
    """

    def __init__(self, in_channels: int, n_filters: Sequence[int], encoder_type: str, activation: str, use_batch_norm: bool):
        super().__init__()
        if encoder_type not in RESNET_STAGE_BLOCKS:
            raise ValueError(f"unknown segmentation encoder type: {encoder_type!r}")
        n_blocks = RESNET_STAGE_BLOCKS[encoder_type]
        self.conv1 = Conv2dBlock(in_channels, n_filters[0], 7, 2, activation, use_batch_norm)
        self.max_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.blocks2 = residual_stage(n_filters[0], n_filters[1], n_blocks[0], 1, activation, use_batch_norm)
        self.blocks3 = residual_stage(n_filters[1], n_filters[2], n_blocks[1], 2, activation, use_batch_norm)
        self.blocks4 = residual_stage(n_filters[2], n_filters[3], n_blocks[2], 2, activation, use_batch_norm)
        self.blocks5 = residual_stage(n_filters[3], n_filters[4], n_blocks[3], 2, activation, use_batch_norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stem = self.conv1(x)
        stage2 = self.blocks2(self.max_pool(stem))
        stage3 = self.blocks3(stage2)
        stage4 = self.blocks4(stage3)
        latent = self.blocks5(stage4)
        return latent, [stem, stage2, stage3, stage4]


class LearnableDownsampler(nn.Module):
    """Learned 2x downsampling of logits: (B, F, 2H, 2W) features + (B, 1, 2H, 2W) logits -> (B, 1, H, W).

    Features are space-to-depth'd and convolved into 4 softmax weights per output pixel; the output
    logit is the weighted sum of the 4 subpixel logits it covers, so the network chooses, per pixel,
    which high-resolution evidence to keep (a small lesion is not averaged away).
    """

    def __init__(self, in_channels: int, n_filters: Sequence[int], kernel_sizes: Sequence[int], activation: str):
        super().__init__()
        layers = []
        channels = in_channels * 4
        for filters, kernel_size in zip(n_filters, kernel_sizes):
            layers.append(Conv2dBlock(channels, filters, kernel_size, 1, activation, False))
            channels = filters
        self.conv_block = nn.Sequential(*layers)
        self.weights = Conv2dBlock(channels, 4, 1, 1, None, False)
        # 1 once the fast inference path has folded the space-to-depth into conv_block's first convolution.
        self.feature_block_size = 2

    def forward(self, features: torch.Tensor, logits_subpixels: torch.Tensor) -> torch.Tensor:
        """features (B, F, 2H, 2W) and the 2x logits space-to-depth'd, (B, 4, H, W) -> logits (B, 1, H, W)."""
        weights = torch.softmax(self.weights(self.conv_block(space_to_depth(features, self.feature_block_size))), dim=1)
        return torch.sum(weights * logits_subpixels, dim=1, keepdim=True)


class SegmentationDecoder(nn.Module):
    """Decoder with subpixel guidance: latent + skips + guidance -> logits at 2H and H.

    ``n_filters`` has six entries: one per encoder skip (coarse to fine), one at input resolution
    (guided by resolution 1) and one at 2x resolution (guided by resolution 0).
    """

    def __init__(
        self,
        latent_channels: int,
        skip_channels: Sequence[int],
        guidance_channels: dict[int, int],
        n_filters: Sequence[int],
        n_filters_learnable_downsampler: Sequence[int],
        kernel_sizes_learnable_downsampler: Sequence[int],
        activation: str,
        use_batch_norm: bool,
    ):
        super().__init__()
        blocks = {}
        in_channels = latent_channels
        # deconv4 ... deconv1 fuse the encoder skips, coarsest first.
        for index, skip in zip((4, 3, 2, 1), reversed(skip_channels)):
            blocks[f"deconv{index}"] = DecoderBlock(in_channels, skip, n_filters[4 - index], activation, use_batch_norm)
            in_channels = n_filters[4 - index]
        self.deconv4, self.deconv3, self.deconv2, self.deconv1 = (blocks[f"deconv{i}"] for i in (4, 3, 2, 1))
        self.deconv0 = DecoderBlock(in_channels, guidance_channels.get(1, 0), n_filters[4], activation, use_batch_norm)
        self.deconv_super_resolution = DecoderBlock(
            n_filters[4], guidance_channels.get(0, 0), n_filters[5], activation, use_batch_norm
        )
        self.output = Conv2dBlock(n_filters[5], 1, 3, 1, None, False)
        self.learnable_downsampler = LearnableDownsampler(
            n_filters[5], n_filters_learnable_downsampler, kernel_sizes_learnable_downsampler, activation
        )
        # True once the fast inference path has folded space_to_depth(output(x), 2) into ``output``
        # itself (one stride-2 convolution giving the four subpixel logits at H x W).
        self.output_folded = False

    def forward(
        self, latent: torch.Tensor, skips: list[torch.Tensor], guidance: dict[int, torch.Tensor], size: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits_2x (B, 1, 2H, 2W), logits (B, 1, H, W)) for input size (H, W)."""
        height, width = size
        x = latent
        for block, skip in zip((self.deconv4, self.deconv3, self.deconv2, self.deconv1), reversed(skips)):
            x = block(x, skip)
        x = self.deconv0(x, guidance.get(1), size=(height, width))
        features_2x = self.deconv_super_resolution(x, guidance.get(0), size=(2 * height, 2 * width))
        if self.output_folded:
            logits_subpixels = self.output(features_2x)  # (B, 4, H, W)
            logits_2x = depth_to_space(logits_subpixels, 2)
        else:
            logits_2x = self.output(features_2x)  # (B, 1, 2H, 2W)
            logits_subpixels = space_to_depth(logits_2x, 2)
        return logits_2x, self.learnable_downsampler(features_2x, logits_subpixels)


class SPiN(ReleaseSubnetworks, RemembersConfig):
    """SPiN network: x (B, C, H, W) -> final logits (B, 1, H, W); any H, W (odd sizes included)."""

    RELEASE_SUBNETWORKS = SUBNETWORK_NAMES

    def __init__(self, config: SPiNConfig | None = None, **overrides):
        super().__init__()
        config = config or SPiNConfig()
        if overrides:
            config = SPiNConfig.from_dict({**config.to_dict(), **overrides})
        validate_spin_config(config)
        self.config = config
        self.in_channels = config.input_channels
        activation, batch_norm = config.activation_func, config.use_batch_norm
        self.encoder_subpixel_embedding = SubpixelEmbeddingEncoder(
            config.input_channels, config.n_filters_encoder_subpixel_embedding, activation, batch_norm
        )
        self.decoder_subpixel_embedding = SubpixelEmbeddingDecoder(
            config.n_filters_encoder_subpixel_embedding[-1],
            config.n_filter_decoder_subpixel_embedding,
            config.output_channels_subpixel_embedding,
            config.output_func_subpixel_embedding,
            activation,
            batch_norm,
        )
        self.subpixel_guidance = SubpixelGuidance(
            config.output_channels_subpixel_embedding,
            config.resolutions_subpixel_guidance,
            config.n_filters_subpixel_guidance,
            config.n_convolutions_subpixel_guidance,
            activation,
            batch_norm,
        )
        filters = config.n_filters_encoder_segmentation
        self.encoder_segmentation = ResNetEncoder(
            config.input_channels, filters, config.encoder_type_segmentation[0], activation, batch_norm
        )
        self.decoder_segmentation = SegmentationDecoder(
            latent_channels=filters[4],
            skip_channels=filters[:4],
            guidance_channels=dict(zip(config.resolutions_subpixel_guidance, config.n_filters_subpixel_guidance)),
            n_filters=config.n_filters_decoder_segmentation,
            n_filters_learnable_downsampler=config.n_filters_learnable_downsampler,
            kernel_sizes_learnable_downsampler=config.kernel_sizes_learnable_downsampler,
            activation=activation,
            use_batch_norm=batch_norm,
        )
        initialize_weights(self, config.weight_initializer)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns {"logits": (B, 1, H, W), "logits_2x": (B, 1, 2H, 2W), "subpixel_embedding": (B, E, 2H, 2W)}."""
        embedding = self.decoder_subpixel_embedding(self.encoder_subpixel_embedding(x))
        guidance = self.subpixel_guidance(embedding)
        latent, skips = self.encoder_segmentation(x)
        logits_2x, logits = self.decoder_segmentation(latent, skips, guidance, x.shape[-2:])
        return {"logits": logits, "logits_2x": logits_2x, "subpixel_embedding": embedding}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> final logits (B, 1, H, W)."""
        return self.forward_all(x)["logits"]



def validate_spin_config(config: SPiNConfig) -> None:
    """Raises ``ValueError`` for a config this implementation cannot build."""
    if config.input_channels < 1:
        raise ValueError(f"input_channels must be >= 1, got {config.input_channels}")
    if len(config.n_filters_encoder_segmentation) != 5:
        raise ValueError("n_filters_encoder_segmentation needs 5 entries")
    if len(config.n_filters_decoder_segmentation) != 6:
        raise ValueError("n_filters_decoder_segmentation needs 6 entries")
    if len(config.n_filters_encoder_subpixel_embedding) != 3:
        raise ValueError("n_filters_encoder_subpixel_embedding needs 3 entries")
    if config.encoder_type_subpixel_embedding[0] != "resnet5_subpixel_embedding":
        raise ValueError(f"unsupported subpixel embedding encoder: {config.encoder_type_subpixel_embedding}")
    if config.decoder_type_subpixel_embedding[0] != "subpixel":
        raise ValueError(f"unsupported subpixel embedding decoder: {config.decoder_type_subpixel_embedding}")
    if set(config.decoder_type_segmentation) != {"subpixel_guidance", "learnable_downsampler"}:
        raise ValueError(f"unsupported segmentation decoder: {config.decoder_type_segmentation}")
    if not set(config.resolutions_subpixel_guidance) <= {0, 1}:
        raise ValueError("resolutions_subpixel_guidance must be drawn from {0, 1}")
