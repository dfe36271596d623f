"""The optimised inference path gives the plain path's probabilities (and masks where it skips)."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from spinseg.data.transforms import Normalization
from spinseg.models.model_config import parse_model_config
from spinseg.acceleration.inference import (
    FusedConvolutionActivation,
    TwiceUpsampledConvolution,
    TwiceUpsampledDecoderBlock,
    convolution_then_space_to_depth,
    fuse_upsampling_convolutions,
    onednn_bf16_available,
    fold_space_to_depth,
    fuse_conv_batch_norm,
    fuse_convolution_activations,
    onednn_fusion_available,
    prepare_inference_model,
    space_to_depth_convolution,
    to_channels_last,
)
from spinseg.inference.predictor import (
    InferenceOptions,
    background_windows,
    predict_volume,
    prepare_for_inference,
)
from spinseg.models import build_model
from spinseg.models.blocks import Conv2dBlock, DecoderBlock, UpsampleConvBlock, space_to_depth
from spinseg.models.layers_extra import ConvNormActivation

from conftest import SMALL_SPIN_CONFIG

NORMALIZATION = Normalization()  # ATLAS mean/std: padding (the mean) is not background (0)
# The plain path (the model as trained, every slice) and the optimised one (prepared model, background skipped).
PLAIN = InferenceOptions(normalization=NORMALIZATION, n_chunk=5, batch_size=4, prepare=False)
OPTIMISED = InferenceOptions(normalization=NORMALIZATION, n_chunk=5, batch_size=4, prepare=True, skip_background=True)


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every batch norm non-trivial statistics and affine weights (defaults would fold to ~identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) * 4 - 2)  # negative scales too
            module.bias.data.copy_(torch.rand(size, generator=generator) * 2 - 1)
    return model.eval()


def small_spin(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batch_norms(build_model("spin", **parse_model_config(SMALL_SPIN_CONFIG)), seed)


def brain_volume(shape=(40, 44, 16), first=5, last=11, seed=0) -> np.ndarray:
    """(H, W, D) raw volume: exact-zero background, noisy tissue in slices first..last-1 only."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, dtype=np.float32)
    volume[6:-6, 5:-5, first:last] = rng.normal(60.0, 15.0, (shape[0] - 12, shape[1] - 10, last - first)).clip(1, None)
    return volume


class ShiftedLogits(nn.Module):
    """Wraps a model and adds a constant to its logits: lets a test fix the background probability."""

    def __init__(self, model: nn.Module, shift: float):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shift


def test_fused_model_matches_batch_norm_model_and_leaves_it_untouched():
    model = small_spin()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    fused = fuse_conv_batch_norm(model)
    x = torch.randn(3, 5, 45, 53)
    with torch.no_grad():
        expected, actual = model(x), fused(x)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    blocks = [m for m in fused.modules() if isinstance(m, Conv2dBlock)]
    assert blocks and all(block.batch_norm is None for block in blocks)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    # The original keeps its batch norms and weights.
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_conv_norm_activation_blocks_fuse_including_3d_and_even_kernels():
    torch.manual_seed(1)
    model = nn.Sequential(
        ConvNormActivation(2, 6, 3, 1, 1, "relu", True, dimensions=3),
    )
    model_2d = nn.Sequential(ConvNormActivation(3, 4, 2, 1, 1, "relu", True), ConvNormActivation(4, 5, 3, 2, 2, "relu", True))
    for network, shape in ((model, (2, 2, 5, 9, 7)), (model_2d, (2, 3, 11, 13))):
        randomize_batch_norms(network)
        fused = fuse_conv_batch_norm(network)
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), network(x), atol=1e-5, rtol=1e-5)
        assert all(block.batch_norm is None for block in fused.modules() if isinstance(block, ConvNormActivation))


def test_blocks_that_resample_between_conv_and_batch_norm_are_not_fused():
    from spinseg.models import kiunet

    block = randomize_batch_norms(kiunet.ConvResampleBlock(3, 4, "down", "relu", True))
    fused = fuse_conv_batch_norm(block)
    assert fused.batch_norm is not None  # max-pooling between them does not commute with a negative scale
    x = torch.randn(2, 3, 8, 10)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x))


def test_channels_last_conversion_keeps_3d_weights_and_parameter_identity():
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Conv2d(2, 3, 3))
    parameters = list(model.parameters())
    to_channels_last(model)
    assert [id(p) for p in model.parameters()] == [id(p) for p in parameters]
    assert model[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight.dim() == 5


@pytest.mark.parametrize("block_size,kernel_size", [(2, 3), (2, 1), (4, 3), (2, 5)])
def test_space_to_depth_then_convolution_equals_one_strided_convolution(block_size, kernel_size):
    torch.manual_seed(block_size * 10 + kernel_size)
    convolution = nn.Conv2d(3 * block_size**2, 4, kernel_size, padding=kernel_size // 2).double()
    x = torch.randn(2, 3, 6 * block_size, 7 * block_size, dtype=torch.float64)
    folded = space_to_depth_convolution(convolution, block_size)
    assert folded.stride == (block_size, block_size) and folded.kernel_size == (block_size * kernel_size,) * 2
    with torch.no_grad():
        torch.testing.assert_close(folded(x), convolution(space_to_depth(x, block_size)), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("block_size,kernel_size", [(2, 3), (2, 1), (4, 3), (2, 5)])
def test_convolution_then_space_to_depth_equals_one_strided_convolution(block_size, kernel_size):
    torch.manual_seed(block_size * 7 + kernel_size)
    convolution = nn.Conv2d(3, 2, kernel_size, padding=kernel_size // 2).double()
    x = torch.randn(2, 3, 5 * block_size, 7 * block_size, dtype=torch.float64)
    folded = convolution_then_space_to_depth(convolution, block_size)
    assert folded.stride == (block_size, block_size) and folded.out_channels == 2 * block_size**2
    with torch.no_grad():
        torch.testing.assert_close(folded(x), space_to_depth(convolution(x), block_size), atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="cannot fold"):
        convolution_then_space_to_depth(nn.Conv2d(3, 2, 2, padding=1), 2)  # even kernel: no centred window


@pytest.mark.skipif(not onednn_fusion_available(), reason="this torch build has no oneDNN fused convolution")
@pytest.mark.parametrize("activation", ["leaky_relu", None])
def test_twice_upsampled_convolution_equals_upsampling_then_convolution(activation):
    torch.manual_seed(9)
    block = UpsampleConvBlock(6, 5, activation, use_batch_norm=False).eval()
    with torch.no_grad():
        block.conv.conv.weight.mul_(3)  # weights of either sign and a spread of sizes
    (replaced,) = [fuse_upsampling_convolutions(nn.Sequential(copy.deepcopy(block)))[0]]
    assert isinstance(replaced, TwiceUpsampledConvolution)
    x = torch.randn(2, 6, 9, 12)
    with torch.inference_mode():
        for layout in (torch.contiguous_format, torch.channels_last):
            expected = block(x, (18, 24))
            actual = replaced(x.contiguous(memory_format=layout), (18, 24))
            assert actual.shape == expected.shape
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
            # Borders included: the zero padding of the upsampled map is the zero padding of the input.
            assert (actual[..., 0, :] - expected[..., 0, :]).abs().max() < 1e-5
        # Sizes one short of twice the input (odd decoder sizes): the last row and column come from the
        # block itself on the input's last two rows and columns, the rest from the phases.
        for size in ((17, 24), (18, 23), (17, 23)):
            torch.testing.assert_close(replaced(x, size), block(x, size), atol=1e-5, rtol=1e-5)
        tiny = torch.randn(1, 6, 2, 2)
        torch.testing.assert_close(replaced(tiny, (3, 3)), block(tiny, (3, 3)), atol=1e-5, rtol=1e-5)
        # Any other size runs the block itself.
        assert torch.equal(replaced(x, (16, 23)), block(x, (16, 23)))
        assert torch.equal(replaced(x[..., :1, :], (1, 23)), block(x[..., :1, :], (1, 23)))
    y = replaced(x.requires_grad_(), (18, 24))  # with gradients: the block itself, which autograd knows
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.skipif(not onednn_fusion_available(), reason="this torch build has no oneDNN fused convolution")
def test_decoder_block_writes_upsampled_map_and_skip_into_one_tensor_with_the_same_result():
    torch.manual_seed(10)
    block = DecoderBlock(6, 3, 5, "leaky_relu", use_batch_norm=False).eval()
    replaced = fuse_upsampling_convolutions(nn.Sequential(copy.deepcopy(block)))[0]
    assert isinstance(replaced, TwiceUpsampledDecoderBlock)
    x = torch.randn(2, 6, 9, 12).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        skip = torch.randn(2, 3, 18, 24)
        torch.testing.assert_close(replaced(x, skip), block(x, skip), atol=1e-5, rtol=1e-5)
        for odd in ((17, 24), (18, 23), (17, 23)):  # one short of twice the input: the decoders' odd sizes
            odd_skip = torch.randn(2, 3, *odd)
            torch.testing.assert_close(replaced(x, odd_skip), block(x, odd_skip), atol=1e-5, rtol=1e-5)
        other_skip = torch.randn(2, 3, 16, 24)  # anything else: the block itself
        assert torch.equal(replaced(x, other_skip), block(x, other_skip))


def test_preparing_a_model_leaves_the_global_random_state_alone():
    """The trainer prepares a copy for every validation; a resumed run must draw the same random numbers."""
    model = small_spin(seed=5)
    before = torch.get_rng_state()
    prepare_inference_model(model)
    assert torch.equal(torch.get_rng_state(), before)


def test_space_to_depth_cannot_be_folded_into_a_strided_convolution():
    with pytest.raises(ValueError, match="cannot fold"):
        space_to_depth_convolution(nn.Conv2d(8, 4, 3, stride=2, padding=1), 2)


def test_folding_space_to_depth_in_spin_keeps_its_output():
    fused = fuse_conv_batch_norm(small_spin(seed=3)).double()  # the space-to-depth fold needs batch norms folded
    folded = fold_space_to_depth(copy.deepcopy(fused))
    assert all(size == 1 for size in folded.subpixel_guidance.input_block_sizes)
    assert 2 in fused.subpixel_guidance.input_block_sizes  # the copy was not touched
    assert folded.decoder_segmentation.learnable_downsampler.feature_block_size == 1
    assert folded.decoder_segmentation.output_folded and not fused.decoder_segmentation.output_folded
    x = torch.randn(2, 5, 33, 38, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), fused(x), atol=1e-9, rtol=1e-9)
        # forward_all still returns the 2x logits (rebuilt from the folded output's subpixels).
        torch.testing.assert_close(folded.forward_all(x)["logits_2x"], fused.forward_all(x)["logits_2x"], atol=1e-9, rtol=1e-9)


@pytest.mark.skipif(not onednn_fusion_available(), reason="this torch build has no oneDNN fused convolution")
@pytest.mark.parametrize("activation", ["leaky_relu", "relu", None])
def test_fused_convolution_activation_equals_convolution_then_activation(activation):
    torch.manual_seed(4)
    blocks = nn.Sequential(Conv2dBlock(3, 6, 3, 1, activation), Conv2dBlock(6, 5, 1, 2, activation),
                           ConvNormActivation(5, 4, 2, 1, 1, activation, use_batch_norm=False)).eval()
    fused = fuse_convolution_activations(copy.deepcopy(blocks))
    assert all(isinstance(child, FusedConvolutionActivation) for child in fused)
    x = torch.randn(2, 3, 17, 20)
    with torch.inference_mode():
        expected = blocks(x)
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5, rtol=1e-5)
    # With gradients on (or on a GPU / under autocast) it runs the plain modules, which autograd knows.
    y = fused(x.requires_grad_())
    y.sum().backward()
    assert x.grad is not None and torch.allclose(y.detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN runs no bf16 convolution on this CPU")
def test_fused_convolution_activation_under_bf16_autocast_matches_autocast_modules():
    torch.manual_seed(5)
    blocks = nn.Sequential(Conv2dBlock(3, 6, 3, 1, "leaky_relu"), Conv2dBlock(6, 5, 1, 2, "relu")).eval()
    fused = to_channels_last(fuse_convolution_activations(copy.deepcopy(blocks)))
    x = torch.randn(2, 3, 17, 20).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = blocks.double()(x.double())
        blocks.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected, actual = blocks(x), fused(x)
        assert actual.dtype == expected.dtype == torch.bfloat16
        # Both round to bf16 (8 mantissa bits); the fused one no less accurately than autocast's modules.
        error_fused, error_modules = (actual.double() - exact).abs().max(), (expected.double() - exact).abs().max()
        assert error_fused <= 1.25 * error_modules and error_fused < 0.05 * exact.abs().max()
        # The bf16 weights are cast once and reused, and cast again when the weights change.
        first = fused[0].bf16_parameters()[0]
        assert fused[0].bf16_parameters()[0] is first and first.dtype == torch.bfloat16
    with torch.no_grad():
        fused[0].conv.weight.mul_(2)
    assert fused[0].bf16_parameters()[0] is not first
    torch.testing.assert_close(fused[0].bf16_parameters()[0].float(), 2 * first.float())


def test_background_windows_respect_padding():
    volume = brain_volume()  # tissue in slices 5..10 of 16
    windows = background_windows(volume, 5, NORMALIZATION.pad_value(), 0.0)
    # Windows reaching past either end hold padding (the mean), which is not background.
    assert np.flatnonzero(windows).tolist() == [2, 13]
    windows_zero_padding = background_windows(volume, 5, 0.0, 0.0)
    assert np.flatnonzero(windows_zero_padding).tolist() == [0, 1, 2, 13, 14, 15]
    assert np.flatnonzero(background_windows(volume, 1, 30.0, 0.0)).tolist() == [0, 1, 2, 3, 4, 11, 12, 13, 14, 15]


@pytest.mark.parametrize("test_time_flip", [False, True])
def test_fast_path_without_skipping_equals_plain_path(test_time_flip):
    model = small_spin()
    volume = brain_volume()
    expected, _ = predict_volume(model, volume, replace(PLAIN, test_time_flip=test_time_flip))
    options = replace(OPTIMISED, batch_size=6, skip_background=False, test_time_flip=test_time_flip)
    actual, info = predict_volume(prepare_for_inference(model, options), volume, options)
    assert actual.shape == volume.shape and actual.dtype == np.float32 and actual.flags.c_contiguous
    assert np.abs(actual - expected).max() <= 1e-4
    assert info["slices_skipped"] == 0 and info["slices_run"] == volume.shape[-1]


def test_skipping_background_keeps_the_mask_and_the_other_slices():
    # A strongly negative shift makes the background probability ~0, as for a trained network.
    model = ShiftedLogits(small_spin(), -20.0).eval()
    volume = brain_volume()
    expected, _ = predict_volume(model, volume, PLAIN)
    actual, info = predict_volume(prepare_for_inference(model, OPTIMISED), volume, OPTIMISED)
    skipped = background_windows(volume, 5, NORMALIZATION.pad_value(), 0.0)
    assert info["slices_skipped"] == int(skipped.sum()) == 2
    assert info["slices_run"] == volume.shape[-1] - 2 and not info["skip_disabled"]
    assert info["background_max_probability"] < 0.5
    assert np.all(actual[..., skipped] == 0)
    assert np.abs(actual[..., ~skipped] - expected[..., ~skipped]).max() <= 1e-4
    np.testing.assert_array_equal(actual > 0.5, expected > 0.5)


def test_skipping_turns_itself_off_when_background_would_be_segmented():
    model = ShiftedLogits(small_spin(), 20.0).eval()  # background probability ~1
    volume = brain_volume()
    expected, _ = predict_volume(model, volume, PLAIN)
    actual, info = predict_volume(prepare_for_inference(model, OPTIMISED), volume, OPTIMISED)
    assert info["slices_skipped"] == 0 and "would change the mask" in info["skip_disabled"]
    assert np.abs(actual - expected).max() <= 1e-4
    np.testing.assert_array_equal(actual > 0.5, expected > 0.5)


def test_prepare_inference_model_can_compile_lazily():
    # torch.compile only wraps here; compiling happens at the first call, which this test skips
    # (minutes on a CPU). The wrapper keeps the attributes callers read.
    model = small_spin()
    model.model_name = "spin"
    compiled = prepare_inference_model(model, compile=True)
    assert compiled.in_channels == 5 and compiled.model_name == "spin"


@pytest.mark.parametrize("test_time_flip", [False, True])
def test_plain_path_is_the_model_run_on_each_slice_window(test_time_flip):
    """predict_volume's batching, padding and flip average equal the model applied to one window at a time."""
    from spinseg.data.volumes import stack_slices

    model = small_spin(seed=2)
    volume = brain_volume(shape=(24, 28, 7), first=1, last=6)
    actual, info = predict_volume(model, volume, replace(PLAIN, batch_size=3, test_time_flip=test_time_flip))
    assert info["slices_run"] == volume.shape[-1] and info["slices_skipped"] == 0 and info["seconds"] > 0
    with torch.inference_mode():
        for index in range(volume.shape[-1]):
            window = NORMALIZATION(torch.from_numpy(stack_slices(volume, index, 5, NORMALIZATION.pad_value())[None]))
            expected = torch.sigmoid(model(window))
            if test_time_flip:
                expected = 0.5 * (expected + torch.sigmoid(model(window.flip(-1))).flip(-1))
            # Batches of 3 and of 1 may sum in another order: float rounding only, far below any indexing error.
            np.testing.assert_allclose(actual[..., index], expected[0, 0].numpy(), atol=1e-5, rtol=0)


def test_a_model_is_prepared_once_not_per_volume(monkeypatch):
    import spinseg.acceleration.inference as acceleration

    calls = []
    original = acceleration.prepare_inference_model
    monkeypatch.setattr(acceleration, "prepare_inference_model", lambda model, **kwargs: calls.append(1) or original(model, **kwargs))
    model, volume = small_spin(), brain_volume()
    options = replace(OPTIMISED, skip_background=False)
    assert prepare_for_inference(model, PLAIN) is model and calls == []  # the plain path runs the model itself
    prepared = prepare_for_inference(model, options)
    first, _ = predict_volume(prepared, volume, options)
    second, _ = predict_volume(prepared, volume, options)
    assert len(calls) == 1 and np.array_equal(first, second)
    # An unprepared model given with preparing options is prepared by the call itself: same result.
    third, _ = predict_volume(model, volume, options)
    assert len(calls) == 2 and np.array_equal(first, third)
    plain, _ = predict_volume(model, volume, PLAIN)
    assert np.abs(first - plain).max() <= 1e-4
