"""KiU-Net and X-Net baselines: construction, any-size forward/backward, a short overfit, bad configs.

KiU-Net's full 197 x 233 slice is only run forward without gradients (about 6 s on 2 CPU cores;
forward + backward takes ~20 s and 7 GiB because its Kite-Net branch runs at 8x the input
resolution); its backward pass is checked at 45 x 53.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from spinseg.errors import UserInputError
from conftest import assert_finite_gradients, count_parameters, documented_parameter_count
from spinseg.models import build_model
from spinseg.models.kiunet import CrossResidualFusionBlock, KiUNet
from spinseg.models.xnet import FeatureSimilarityModule, XBlock, XNet

MODEL_CLASSES = {"kiunet": KiUNet, "xnet": XNet}
NAMES = list(MODEL_CLASSES)


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults_and_documented_parameter_count(name):
    torch.manual_seed(0)
    model = build_model(name)
    assert isinstance(model, MODEL_CLASSES[name])
    assert model.in_channels == 1
    count = count_parameters(model)
    assert count == documented_parameter_count(MODEL_CLASSES[name]) == MODEL_CLASSES[name].PARAMETER_COUNT_AT_DEFAULTS


def test_xnet_forward_backward_full_slice_train_and_eval():
    torch.manual_seed(0)
    model = build_model("xnet")
    x = torch.randn(1, 1, 197, 233)
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        logits = model.forward_all(x)["logits"]
        assert logits.shape == (1, 1, 197, 233)
        assert torch.isfinite(logits).all()
        logits.mean().backward()
        assert_finite_gradients(model)


@pytest.mark.slow
def test_kiunet_forward_backward_full_slice():
    # The heaviest test of the suite (~20 s, ~7 GiB on a CPU): KiU-Net's over-complete branch runs
    # at 8x the input resolution, 1600 x 1920 for a 197 x 233 slice.
    torch.manual_seed(0)
    model = build_model("kiunet").train()
    logits = model.forward_all(torch.randn(1, 1, 197, 233))["logits"]
    assert logits.shape == (1, 1, 197, 233)
    F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    assert_finite_gradients(model)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_small_odd_size(name):
    torch.manual_seed(0)
    model = build_model(name)
    x = torch.randn(2, model.in_channels, 45, 53)
    logits = model(x)
    assert logits.shape == (2, 1, 45, 53)
    F.binary_cross_entropy_with_logits(logits, (x[:, :1] > 0).float()).backward()
    assert_finite_gradients(model)


@pytest.mark.parametrize("name", NAMES)
def test_adam_steps_reduce_loss_on_bright_square(name):
    torch.manual_seed(0)
    model = build_model(name)
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 10:22, 12:24] = 1.0
    x = (target + 0.1 * torch.randn(2, model.in_channels, 32, 32)).expand(-1, model.in_channels, -1, -1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "bad_config",
    [
        {"input_channels": 0},
        {"n_filters": []},
        {"n_filters": [16, -1]},
        {"activation_func": "swish"},
        {"weight_initializer": "orthogonal"},
        {"padding_mode": "reflect"},
        {"use_batch_norm": "yes"},
        {"no_such_option": 1},
    ],
)
def test_invalid_config_raises(name, bad_config):
    with pytest.raises(UserInputError, match=name):
        build_model(name, **bad_config)


def test_invalid_config_raises_value_error_from_class():
    with pytest.raises(ValueError, match="n_filters_output"):
        KiUNet(n_filters_output=0)
    with pytest.raises(ValueError, match="fsm_similarity"):
        XNet(fsm_similarity="cosine")
    with pytest.raises(ValueError, match="fsm_reduction"):
        XNet(fsm_reduction=0)
    with pytest.raises(TypeError):
        KiUNet(1)  # keyword arguments only


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_channel_count_raises(name):
    model = build_model(name, n_filters=[4, 4])
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("input_channels", [2, 5])
def test_accepts_other_slice_counts_and_zero_padding(name, input_channels):
    model = build_model(name, input_channels=input_channels, n_filters=[4, 8, 8], padding_mode="zeros")
    assert model.in_channels == input_channels
    assert model(torch.randn(1, input_channels, 21, 30)).shape == (1, 1, 21, 30)


def test_kiunet_branches_go_over_and_under_complete():
    model = build_model("kiunet")
    shapes = {}
    for branch in ("unet_encoder", "kite_encoder", "unet_decoder", "kite_decoder"):
        for level, block in enumerate(getattr(model, branch)):
            block.register_forward_hook(
                lambda module, inputs, output, key=(branch, level): shapes.update({key: output.shape})
            )
    with torch.no_grad():
        model(torch.randn(1, 1, 20, 27))  # padded to 24 x 32
    assert [shapes["kite_encoder", level][-2:] for level in range(3)] == [(48, 64), (96, 128), (192, 256)]
    assert [shapes["unet_encoder", level][-2:] for level in range(3)] == [(12, 16), (6, 8), (3, 4)]
    assert [shapes["kite_decoder", level][-3:] for level in range(3)] == [(32, 96, 128), (16, 48, 64), (8, 24, 32)]
    assert [shapes["unet_decoder", level][-3:] for level in range(3)] == [(32, 6, 8), (16, 12, 16), (8, 24, 32)]


def test_crfb_exchanges_features_both_ways():
    torch.manual_seed(0)
    block = CrossResidualFusionBlock(4, "relu", use_batch_norm=False)
    unet, kite = torch.randn(1, 4, 3, 5), torch.randn(1, 4, 12, 20)
    new_unet, new_kite = block(unet, kite)
    assert new_unet.shape == unet.shape and new_kite.shape == kite.shape
    # Changing only the Kite-Net input changes the U-Net output, and vice versa.
    assert not torch.allclose(block(unet, kite + 1.0)[0], new_unet)
    assert not torch.allclose(block(unet + 1.0, kite)[1], new_kite)


def test_xblock_and_fsm_shapes_and_long_range_context():
    torch.manual_seed(0)
    assert XBlock(3, 8, "relu", use_batch_norm=True)(torch.randn(2, 3, 9, 11)).shape == (2, 8, 9, 11)
    for similarity in ("dot_product", "softmax"):
        module = FeatureSimilarityModule(32, "relu", use_batch_norm=False, similarity=similarity).eval()
        x = torch.randn(1, 32, 6, 7)
        output = module(x)
        assert output.shape == x.shape
        # A change in one corner reaches the opposite corner: beyond both 3x3 convolutions' reach.
        changed = x.clone()
        changed[..., 0, 0] += 5.0
        assert not torch.allclose(module(changed)[..., -1, -1], output[..., -1, -1])
