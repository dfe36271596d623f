"""Preparing a model for fast inference: same probabilities as the model itself, faster.

:func:`prepare_inference_model` makes the prepared copy that :mod:`spinseg.inference.predictor`
runs when its options ask for it (``InferenceOptions.prepare``).

Levers, each measured by ``python -m spinseg.benchmark`` (see docs/performance.md):

* batch norm folded into the preceding bias-free convolution (:func:`fuse_conv_batch_norm`), which
  removes one full read and write of every feature map;
* channels-last (NHWC) weights and inputs, the layout oneDNN (CPU) and cuDNN (GPU) convolutions
  prefer; on a 2-core CPU this is the largest single win;
* a space-to-depth followed by a k x k convolution becomes one convolution with an (r*k) x (r*k)
  kernel and stride r on the original map (:func:`fold_space_to_depth`): the same products, without
  writing the rearranged copy (SPiN's subpixel guidance and learnable downsampler);
* on the CPU, each 2-D convolution and the activation after it run as one oneDNN call with the
  activation as a post-op (:func:`fuse_convolution_activations`), so an activation no longer reads
  and writes every feature map again (SPiN's 2H x 2W maps are ~94 MB a batch of 8);
* SPiN's output convolution and the space-to-depth after it become one strided convolution
  (:func:`convolution_then_space_to_depth`), and a nearest 2x upsampling followed by a 3x3
  convolution runs as a 2x2 convolution at the lower resolution (:class:`TwiceUpsampledConvolution`,
  CPU);
* optional ``torch.compile`` and bf16 autocast (``amp``: GPUs, and CPUs with AVX512-BF16 or AMX).

None of these but ``amp`` changes the model's math: outputs agree with the plain path within float
rounding (bf16 autocast rounds to 8 mantissa bits; it is opt-in).
"""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from spinseg.models.blocks import Conv2dBlock
from spinseg.models.layers_extra import ConvNormActivation
from spinseg.models.blocks import DecoderBlock, UpsampleConvBlock
from spinseg.models.spin import LearnableDownsampler, SegmentationDecoder, SubpixelGuidance

# Blocks whose forward is exactly "conv -> batch_norm -> ..." with nothing in between, so the batch
# norm may be folded into the convolution. Blocks that resample between the two (KiU-Net's
# ConvResampleBlock max-pools there, and max-pooling does not commute with a negative scale) are
# deliberately absent and stay as they are.
FUSABLE_BLOCKS: tuple[type[nn.Module], ...] = (Conv2dBlock, ConvNormActivation)


def fused_convolution(convolution: nn.Conv2d | nn.Conv3d, batch_norm: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A new convolution equal to ``batch_norm(convolution(x))`` in eval mode.

    BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta, and y = W * x + b, so the fused
    convolution has W' = W * s (s = gamma / sqrt(var + eps), per output channel) and
    b' = (b - mean) * s + beta. Computed in float64 so the fold itself adds no rounding worth
    mentioning; the result is cast back to the convolution's dtype.
    """
    weight = convolution.weight.detach().double()
    bias = convolution.bias.detach().double() if convolution.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    mean = batch_norm.running_mean.detach().double()
    variance = batch_norm.running_var.detach().double()
    gamma = batch_norm.weight.detach().double() if batch_norm.weight is not None else torch.ones_like(mean)
    beta = batch_norm.bias.detach().double() if batch_norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(variance + batch_norm.eps)

    fused = copy.deepcopy(convolution)
    dtype = convolution.weight.dtype
    # Scale every output channel's kernel: broadcast (C_out,) over (C_out, C_in, k, k[, k]).
    fused.weight = nn.Parameter((weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).to(dtype), requires_grad=False)
    fused.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype), requires_grad=False)
    return fused


def fuse_conv_batch_norm(model: nn.Module) -> nn.Module:
    """Returns an eval-mode copy of ``model`` with every foldable batch norm folded into its convolution.

    Only valid for inference: in training, batch norm normalises with the *batch* statistics,
    which a fixed fold cannot reproduce. The input model is left untouched. Blocks of
    :data:`FUSABLE_BLOCKS` lose their ``batch_norm`` (set to None, which their forward skips) and
    their convolution gains a bias; every other module is copied as it is.
    """
    fused_model = copy.deepcopy(model).eval()
    for module in fused_model.modules():
        if isinstance(module, FUSABLE_BLOCKS) and getattr(module, "batch_norm", None) is not None:
            if not module.batch_norm.track_running_stats or module.batch_norm.running_mean is None:
                continue  # batch norm without running statistics normalises per batch even in eval
            module.conv = fused_convolution(module.conv, module.batch_norm)
            module.batch_norm = None
    return fused_model


def to_channels_last(model: nn.Module) -> nn.Module:
    """Stores every 4-D parameter and buffer of ``model`` channels-last (NHWC), in place; returns it.

    ``model.to(memory_format=torch.channels_last)`` refuses models holding 5-D (3-D convolution)
    weights, such as D-UNet's; those stay as they are here while its 2-D layers still convert.
    Parameters keep their identity (only ``.data`` changes), so an optimizer built before or
    after sees the same tensors.
    """
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def space_to_depth_convolution(convolution: nn.Conv2d, block_size: int) -> nn.Conv2d:
    """The convolution equal to ``convolution(space_to_depth(x, block_size))``, applied to ``x`` itself.

    Space-to-depth puts pixel (i, j) of each r x r block of channel c into channel c*r*r + i*r + j,
    so tap (dy, dx) of input channel c*r*r + i*r + j reads original row r*(y + dy - p) + i. With
    u = r*dy + i and v = r*dx + j that is one convolution with kernel K[o, c, u, v] =
    W[o, c*r*r + i*r + j, dy, dx] of size r*k, stride r and padding r*p: the same products and
    sums, in another order. Needs stride 1, no dilation or groups, and "same" padding p = k // 2
    (an (r*H, r*W) input then gives (H, W) exactly as before).
    """
    r = block_size
    kernel_height, kernel_width = convolution.kernel_size
    if (
        convolution.stride != (1, 1) or convolution.dilation != (1, 1) or convolution.groups != 1
        or convolution.padding != (kernel_height // 2, kernel_width // 2) or convolution.padding_mode != "zeros"
    ):
        raise ValueError(f"cannot fold space-to-depth into {convolution}")
    out_channels, in_channels = convolution.out_channels, convolution.in_channels // (r * r)
    weight = convolution.weight.detach().reshape(out_channels, in_channels, r, r, kernel_height, kernel_width)
    # (o, c, i, j, dy, dx) -> (o, c, dy, i, dx, j) -> (o, c, r*k_h, r*k_w)
    weight = weight.permute(0, 1, 4, 2, 5, 3).reshape(out_channels, in_channels, r * kernel_height, r * kernel_width)
    # Built on the meta device and given its real parameters below: no random initialisation, so
    # preparing a model never advances torch's global RNG (the trainer prepares one for every
    # validation, and resumed runs must draw the same numbers). Not nn.utils.skip_init: its
    # to_empty() imports torch's symbolic-shape machinery, ~0.5 s of every predict's start.
    folded = nn.Conv2d(in_channels, out_channels, (r * kernel_height, r * kernel_width), stride=r,
                       padding=(r * (kernel_height // 2), r * (kernel_width // 2)), bias=convolution.bias is not None,
                       device="meta", dtype=weight.dtype)
    folded.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if convolution.bias is not None:
        folded.bias = nn.Parameter(convolution.bias.detach().clone(), requires_grad=False)
    return folded


def convolution_then_space_to_depth(convolution: nn.Conv2d, block_size: int) -> nn.Conv2d:
    """The convolution equal to ``space_to_depth(convolution(x), block_size)``: (B, C, r*H, r*W) -> (B, O*r*r, H, W).

    Output channel o*r*r + i*r + j of the space-to-depth holds pixel (r*y + i, r*x + j) of output
    channel o, whose k x k window starts at row r*y + i - p. A stride-r convolution with an
    (r + k - 1)-wide kernel starting at row r*y - p covers it, with W[o, c, dy, dx] placed at
    (i + dy, j + dx) and zeros elsewhere: (r + k - 1)^2 instead of r*r*k^2 products per output
    pixel group, but one efficient kernel instead of a 1-channel convolution at full resolution
    plus a rearrangement (SPiN's output layer: 24 -> 12 ms a batch of 8 on a 2-core CPU). Needs stride 1, no
    dilation or groups, "same" padding p = k // 2 and odd k.
    """
    r = block_size
    kernel_height, kernel_width = convolution.kernel_size
    if (
        convolution.stride != (1, 1) or convolution.dilation != (1, 1) or convolution.groups != 1
        or convolution.padding != (kernel_height // 2, kernel_width // 2) or convolution.padding_mode != "zeros"
        or kernel_height % 2 == 0 or kernel_width % 2 == 0
    ):
        raise ValueError(f"cannot fold a space-to-depth after {convolution}")
    weight = convolution.weight.detach()
    out_channels, in_channels = weight.shape[:2]
    folded_weight = weight.new_zeros(out_channels, r, r, in_channels, kernel_height + r - 1, kernel_width + r - 1)
    for i in range(r):
        for j in range(r):
            folded_weight[:, i, j, :, i : i + kernel_height, j : j + kernel_width] = weight
    folded = nn.Conv2d(in_channels, out_channels * r * r, (kernel_height + r - 1, kernel_width + r - 1), stride=r,
                       padding=(kernel_height // 2, kernel_width // 2), bias=convolution.bias is not None,
                       device="meta", dtype=weight.dtype)  # meta: no random initialisation (see above)
    folded.weight = nn.Parameter(folded_weight.reshape(out_channels * r * r, in_channels, *folded_weight.shape[-2:]),
                                 requires_grad=False)
    if convolution.bias is not None:
        folded.bias = nn.Parameter(convolution.bias.detach().repeat_interleave(r * r), requires_grad=False)
    return folded


def fold_space_to_depth(model: nn.Module) -> nn.Module:
    """Folds SPiN's space-to-depth steps into the convolutions after them, in place; returns ``model``.

    SubpixelGuidance (resolutions r >= 1) and LearnableDownsampler rearrange a 2H x 2W map into
    4x the channels at H x W and then convolve; :func:`space_to_depth_convolution` does both in one
    strided convolution, and the module's block size is set to 1 so it no longer rearranges. The
    decoder's output convolution, whose 2H x 2W logits the downsampler rearranges, becomes
    :func:`convolution_then_space_to_depth`'s strided convolution (``output_folded``).
    """
    for module in model.modules():
        if isinstance(module, SubpixelGuidance):
            for index, block_size in enumerate(module.input_block_sizes):
                first = module.conv_modules[index][0] if len(module.conv_modules[index]) else None
                if block_size > 1 and isinstance(first, Conv2dBlock) and first.batch_norm is None:
                    first.conv = space_to_depth_convolution(first.conv, block_size)
                    module.input_block_sizes[index] = 1
        elif isinstance(module, LearnableDownsampler) and module.feature_block_size > 1:
            first = module.conv_block[0] if len(module.conv_block) else None
            if isinstance(first, Conv2dBlock) and first.batch_norm is None:
                first.conv = space_to_depth_convolution(first.conv, module.feature_block_size)
                module.feature_block_size = 1
        elif isinstance(module, SegmentationDecoder) and not module.output_folded:
            output = module.output
            if isinstance(output, Conv2dBlock) and output.batch_norm is None and isinstance(output.activation, nn.Identity):
                output.conv = convolution_then_space_to_depth(output.conv, 2)
                module.output_folded = True
    return model


def onednn_fusion_available() -> bool:
    """Whether this torch build has oneDNN's fused convolution + post-op kernel (CPU builds on x86 do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


@functools.lru_cache(maxsize=None)
def onednn_bf16_available() -> bool:
    """Whether oneDNN runs bf16 convolutions on this CPU (natively or emulated on AVX-512; not on older CPUs)."""
    return onednn_fusion_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Activations oneDNN can apply as a convolution post-op: module type -> (name, scalars from module).
FUSABLE_ACTIVATIONS = {
    nn.Identity: lambda module: ("none", []),
    nn.ReLU: lambda module: ("relu", []),
    nn.LeakyReLU: lambda module: ("leaky_relu", [module.negative_slope]),
}


class FusedConvolutionActivation(nn.Module):
    """A bias-carrying 2-D convolution and its activation as one oneDNN call: (B, C_in, H, W) -> (B, C_out, H', W').

    Built from a block whose batch norm is already folded (``conv`` then ``activation``). On a CPU
    float32 input it calls ``torch.ops.mkldnn._convolution_pointwise`` with the activation as a
    post-op, the kernel ``torch.compile`` itself uses for this pattern; the result is bit for bit
    that of the convolution followed by the activation (the post-op is applied to the same fp32
    accumulator). Under CPU bf16 autocast it does the same in bf16, with weights cast once and kept
    (autocast would cast them on every call); the activation then sees the fp32 accumulator where
    autocast rounds to bf16 first. Anywhere else (a GPU, other dtypes, gradients) it runs the two
    plain modules.
    """

    def __init__(self, convolution: nn.Conv2d, activation: nn.Module, extra_padding: tuple[int, ...] | None = None):
        super().__init__()
        self.conv = convolution
        self.activation = activation
        self.extra_padding = extra_padding
        self.post_op, self.post_op_scalars = FUSABLE_ACTIVATIONS[type(activation)](activation)
        self._bf16_parameters: tuple = ()  # (weight in bf16, bias in bf16, identity of the fp32 sources)

    def bf16_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution's weight and bias in bf16, cast once (again only if either changes)."""
        weight, bias = self.conv.weight, self.conv.bias
        key = tuple((tensor.data_ptr(), tensor._version) for tensor in (weight, bias) if tensor is not None)
        if not self._bf16_parameters or self._bf16_parameters[2] != key:
            self._bf16_parameters = (weight.to(torch.bfloat16), bias.to(torch.bfloat16) if bias is not None else None, key)
        return self._bf16_parameters[0], self._bf16_parameters[1]

    def onednn_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """(input, weight, bias) for the fused oneDNN call, or None where the plain modules must run."""
        conv = self.conv
        if x.device.type != "cpu" or torch.is_grad_enabled() or conv.weight.dtype != torch.float32:
            return None
        if not torch.is_autocast_enabled("cpu"):
            return (x, conv.weight, conv.bias) if x.dtype == torch.float32 else None
        if (torch.get_autocast_dtype("cpu") != torch.bfloat16 or x.dtype not in (torch.float32, torch.bfloat16)
                or not onednn_bf16_available()):
            return None
        weight, bias = self.bf16_parameters()
        return x.to(torch.bfloat16), weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra_padding is not None:
            x = F.pad(x, self.extra_padding)
        operands = self.onednn_operands(x)
        if operands is None:
            return self.activation(self.conv(x))
        x, weight, bias = operands
        conv = self.conv
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            self.post_op, self.post_op_scalars, "",
        )


# Nearest 2x upsampling then a 3x3 convolution, per output phase i (row 2y + i): the kernel rows dy = 0, 1, 2
# read upsampled rows 2y + i - 1 + dy, i.e. input rows y - 1 + (i + dy + 1) // 2. A 2-row kernel over input
# rows y - 1 + i, y + i gets them summed: its row u = the sum of the 3x3 rows dy with (i + dy + 1) // 2 - i == u.
PHASE_ROWS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],   # phase 0: dy=0 -> row 0; dy=1, 2 -> row 1
                           [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]],  # phase 1: dy=0, 1 -> row 0; dy=2 -> row 1
                          dtype=torch.float64)


class TwiceUpsampledConvolution(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution + activation, run at the input's resolution: (B, C, H, W) -> (B, O, 2H, 2W).

    Each output pixel (2y + i, 2x + j) sees, through the upsampling, only a 2 x 2 window of the input,
    so the four phases (i, j) are one 2 x 2 convolution with 4*O outputs on the (zero-padded) input
    (:data:`PHASE_ROWS` sums the 3x3 kernel's taps that land on the same input pixel), whose phase
    (i, j) is read shifted by (i, j) and interleaved into the output. 16 instead of 36 products
    per input pixel and output channel, and no upsampled copy (SPiN's last decoder block: 41 ->
    32 ms a batch of 8 on a 2-core CPU, interleaving included). The same sums, in another order: equal within float rounding.

    Replaces an :class:`UpsampleConvBlock` whose convolution has no batch norm left (folded). Sizes
    one short of twice the input (the decoders' odd sizes) are computed too (:meth:`upsampled_with`);
    for any other size, with gradients, on a GPU or under autocast it runs that block as it is.
    """

    def __init__(self, block: UpsampleConvBlock):
        super().__init__()
        self.block = block
        convolution = block.conv.conv
        weight = convolution.weight.detach().double()  # (O, C, 3, 3)
        out_channels = weight.shape[0]
        phases = [torch.einsum("ua,ocab,vb->ocuv", PHASE_ROWS[i], weight, PHASE_ROWS[j]) for i in (0, 1) for j in (0, 1)]
        self.phase_weight = nn.Parameter(torch.cat(phases).to(convolution.weight.dtype), requires_grad=False)  # (4*O, C, 2, 2)
        bias = convolution.bias.detach() if convolution.bias is not None else convolution.weight.new_zeros(out_channels)
        self.phase_bias = nn.Parameter(bias.repeat(4), requires_grad=False)
        self.post_op, self.post_op_scalars = FUSABLE_ACTIVATIONS[type(block.conv.activation)](block.conv.activation)

    @staticmethod
    def can_replace(block: nn.Module) -> bool:
        """Whether ``block`` is an upsampling block this module computes (3x3, stride 1, "same" zero padding, foldable activation)."""
        if not isinstance(block, UpsampleConvBlock):
            return False
        inner = block.conv
        convolution = getattr(inner, "conv", None)
        return (
            getattr(inner, "batch_norm", None) is None and getattr(inner, "extra_padding", None) is None
            and isinstance(convolution, nn.Conv2d) and convolution.kernel_size == (3, 3) and convolution.stride == (1, 1)
            and convolution.padding == (1, 1) and convolution.dilation == (1, 1) and convolution.groups == 1
            and convolution.padding_mode == "zeros" and type(getattr(inner, "activation", None)) in FUSABLE_ACTIVATIONS
        )

    def applies(self, x: torch.Tensor, size) -> bool:
        """Whether the phase convolution computes this call (else the block itself runs): a CPU float32
        input without gradients or autocast, at least 2 x 2, upsampled to twice its size or one less
        (the decoder's odd sizes: nearest upsampling from h to 2h - 1 rows repeats rows exactly as to 2h,
        minus the last)."""
        height, width = x.shape[-2:]
        return (
            2 * height - 1 <= size[0] <= 2 * height and 2 * width - 1 <= size[1] <= 2 * width and min(height, width) >= 2
            and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and self.phase_weight.dtype == torch.float32
        )

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        if not self.applies(x, size):
            return self.block(x, size)
        return self.upsampled_with(x, size)

    def upsampled_with(self, x: torch.Tensor, size, appended: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) -> (B, O [+ A], H, W) for (H, W) = ``size`` (2h or 2h - 1, 2w or 2w - 1): the block's
        output, followed along channels by ``appended`` (B, A, H, W) when given, written into one
        channels-last tensor (so no concatenation copies it again).

        Output pixel (2y + i, 2x + j) of phase (i, j) is read from the phase convolution; only an odd
        size's last row (column) differs, because its 3x3 window reaches the zero padding where the 2x
        map would still hold the input's last row: it is computed by the block itself on the input's
        last two rows (columns), which upsample to the last three output rows (columns).
        """
        batch, _, height, width = x.shape
        out_height, out_width = int(size[0]), int(size[1])
        # (B, 4*O, h + 1, w + 1): phase (i, j) of output pixel (2y + i, 2x + j) sits at (y + i, x + j).
        phases = torch.ops.mkldnn._convolution_pointwise(
            x, self.phase_weight, self.phase_bias, [1, 1], [1, 1], [1, 1], 1, self.post_op, self.post_op_scalars, "",
        ).permute(0, 2, 3, 1)
        out_channels = self.phase_bias.shape[0] // 4
        extra = 0 if appended is None else appended.shape[1]
        output = torch.empty((batch, out_channels + extra, out_height, out_width), dtype=x.dtype, memory_format=torch.channels_last)
        pixels = output.permute(0, 2, 3, 1)  # (B, H, W, O + A), a view
        for i in (0, 1):
            rows = (out_height - i + 1) // 2  # output rows i, i + 2, ... below H
            for j in (0, 1):
                columns = (out_width - j + 1) // 2
                group = (2 * i + j) * out_channels
                pixels[:, i::2, j::2, :out_channels] = phases[:, i : i + rows, j : j + columns, group : group + out_channels]
        if out_height == 2 * height - 1:
            last_rows = self.block(x[:, :, height - 2 :, :], (3, out_width))  # output rows H - 3 .. H - 1
            pixels[:, -1, :, :out_channels] = last_rows[:, :, 2, :].permute(0, 2, 1)
        if out_width == 2 * width - 1:
            last_columns = self.block(x[:, :, :, width - 2 :], (out_height, 3))  # output columns W - 3 .. W - 1
            pixels[:, :, -1, :out_channels] = last_columns[:, :, :, 2].permute(0, 2, 1)
        if extra:
            pixels[..., out_channels:] = appended.permute(0, 2, 3, 1)
        return output


class TwiceUpsampledDecoderBlock(nn.Module):
    """A :class:`DecoderBlock` whose upsampling is a :class:`TwiceUpsampledConvolution`: (B, C, H, W) + skip
    (B, S, 2H, 2W) -> (B, O, 2H, 2W), with the upsampled map and the skip written into one tensor
    instead of concatenated afterwards (SPiN's last block: one 2H x 2W copy fewer). Any other call
    runs the block as it is."""

    def __init__(self, block: DecoderBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size=None) -> torch.Tensor:
        upsampling = self.block.deconv
        target = skip.shape[-2:] if skip is not None else size
        if skip is None or not upsampling.applies(x, target) or skip.dtype != x.dtype:
            return self.block(x, skip, size)
        return self.block.conv(upsampling.upsampled_with(x, target, skip))


def fuse_upsampling_convolutions(model: nn.Module) -> nn.Module:
    """Replaces, in place, every :class:`UpsampleConvBlock` that :class:`TwiceUpsampledConvolution` computes, and
    wraps the :class:`DecoderBlock` holding one in a :class:`TwiceUpsampledDecoderBlock`; returns ``model``.

    Does nothing when oneDNN fusion is unavailable.
    """
    if not onednn_fusion_available():
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if TwiceUpsampledConvolution.can_replace(child):
                setattr(parent, name, TwiceUpsampledConvolution(child))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DecoderBlock) and isinstance(child.deconv, TwiceUpsampledConvolution):
                setattr(parent, name, TwiceUpsampledDecoderBlock(child))
    return model


def fuse_convolution_activations(model: nn.Module) -> nn.Module:
    """Replaces, in place, every batch-norm-free 2-D conv block of ``model`` by a :class:`FusedConvolutionActivation`.

    Covers :data:`FUSABLE_BLOCKS` whose batch norm was folded (or never existed), whose convolution
    uses zero padding and whose activation is in :data:`FUSABLE_ACTIVATIONS`; everything else is
    left alone. Returns ``model``. Does nothing when oneDNN fusion is unavailable.
    """
    if not onednn_fusion_available():
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, FUSABLE_BLOCKS)
                and getattr(child, "batch_norm", None) is None
                and isinstance(child.conv, nn.Conv2d)
                and child.conv.padding_mode == "zeros"
                and not isinstance(child.conv.padding, str)
                and type(child.activation) in FUSABLE_ACTIVATIONS
            ):
                setattr(parent, name, FusedConvolutionActivation(child.conv, child.activation, getattr(child, "extra_padding", None)))
    return model


def prepare_inference_model(
    model: nn.Module,
    channels_last: bool = True,
    fuse_batch_norm: bool = True,
    compile: bool = False,
    fuse_activations: bool = True,
) -> nn.Module:
    """An eval-mode copy of ``model`` for fast inference (the input is untouched).

    ``channels_last`` stores 4-D weights as NHWC; ``fuse_batch_norm`` folds batch norms
    (:func:`fuse_conv_batch_norm`); ``fuse_activations`` runs each folded convolution and its
    activation as one oneDNN call on CPU inputs (:func:`fuse_convolution_activations`; GPU inputs
    take the plain modules); ``compile`` wraps the result in ``torch.compile`` (minutes of
    compilation on a CPU, and the first call of each new input shape compiles again).
    """
    prepared = fuse_conv_batch_norm(model) if fuse_batch_norm else copy.deepcopy(model).eval()
    prepared.requires_grad_(False)
    if fuse_batch_norm:  # the first convolutions must be plain (batch norm folded) to take the rearrangement
        prepared = fold_space_to_depth(prepared)
    if fuse_activations and not compile:  # inductor does its own fusion from the plain graph
        prepared = fuse_upsampling_convolutions(fuse_convolution_activations(prepared))
    if channels_last:
        prepared = to_channels_last(prepared)
    if compile:
        compiled = torch.compile(prepared, dynamic=False)
        # Keep attributes that callers read (in_channels, model_name) reachable on the wrapper.
        for name in ("in_channels", "model_name"):
            if hasattr(prepared, name):
                setattr(compiled, name, getattr(prepared, name))
        return compiled
    return prepared
