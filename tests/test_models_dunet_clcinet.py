"""D-UNet and CLCI-Net baselines: construction, any-size forward/backward, a short overfit, bad configs."""
from __future__ import annotations


import pytest
import torch

from spinseg.errors import UserInputError
from conftest import assert_finite_gradients, count_parameters, documented_parameter_count
from spinseg.models import build_model
from spinseg.models.clcinet import CLCINet
from spinseg.models.dunet import DUNet
from spinseg.models.layers_extra import ConvLSTM2d, ConvNormActivation, crop_to_size, pad_to_multiple

DEFAULT_INPUT_CHANNELS = {"dunet": 4, "clcinet": 1}
MODEL_CLASSES = {"dunet": DUNet, "clcinet": CLCINet}


@pytest.mark.parametrize("name", ["dunet", "clcinet"])
def test_builds_with_defaults_and_documented_parameter_count(name):
    torch.manual_seed(0)
    model = build_model(name)
    assert isinstance(model, MODEL_CLASSES[name])
    assert model.in_channels == DEFAULT_INPUT_CHANNELS[name]
    count = count_parameters(model)
    print(f"{name}: {count:,} parameters")
    assert count == documented_parameter_count(MODEL_CLASSES[name]) == MODEL_CLASSES[name].PARAMETER_COUNT_AT_DEFAULTS


@pytest.mark.parametrize("name", ["dunet", "clcinet"])
def test_construction_is_deterministic(name):
    small = {"n_filters": [4, 4, 4, 4, 4]}
    torch.manual_seed(3)
    first = build_model(name, **small).state_dict()
    torch.manual_seed(3)
    second = build_model(name, **small).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("name", ["dunet", "clcinet"])
def test_forward_backward_full_slice_train_and_eval(name):
    torch.manual_seed(0)
    model = build_model(name)
    x = torch.randn(1, model.in_channels, 197, 233)
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        outputs = model.forward_all(x)
        logits = outputs["logits"]
        assert logits.shape == (1, 1, 197, 233)
        assert torch.isfinite(logits).all()
        logits.mean().backward()
        assert_finite_gradients(model)


@pytest.mark.parametrize("name", ["dunet", "clcinet"])
def test_forward_backward_small_odd_size(name):
    torch.manual_seed(0)
    model = build_model(name)
    x = torch.randn(2, model.in_channels, 45, 53)
    logits = model(x)
    assert logits.shape == (2, 1, 45, 53)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, (x[:, :1] > 0).float()).backward()
    assert_finite_gradients(model)


@pytest.mark.parametrize("name", ["dunet", "clcinet"])
def test_adam_steps_reduce_loss_on_bright_square(name):
    torch.manual_seed(0)
    model = build_model(name)
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 10:22, 12:24] = 1.0
    x = (target + 0.1 * torch.randn(2, model.in_channels, 32, 32)).expand(-1, model.in_channels, -1, -1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", ["dunet", "clcinet"])
@pytest.mark.parametrize(
    "bad_config",
    [
        {"input_channels": 0},
        {"n_filters": [32, 64, 128]},
        {"dropout_rate": 1.5},
        {"activation_func": "swish"},
        {"weight_initializer": "orthogonal"},
        {"padding_mode": "reflect"},
        {"no_such_option": 1},
    ],
)
def test_invalid_config_raises(name, bad_config):
    with pytest.raises(UserInputError, match=name):
        build_model(name, **bad_config)


def test_invalid_config_raises_value_error_from_class():
    with pytest.raises(ValueError, match="n_filters_3d"):
        DUNet(n_filters_3d=[32, -1, 128])
    with pytest.raises(ValueError, match="aspp_dilation_rates"):
        CLCINet(aspp_dilation_rates=[2, 0])


def test_wrong_input_channel_count_raises():
    model = build_model("dunet", n_filters=[4, 4, 4, 4, 4], n_filters_3d=[4, 4, 4])
    with pytest.raises(ValueError, match="4 input channels"):
        model(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("input_channels", [1, 2, 5, 7])
def test_dunet_accepts_other_slice_counts(input_channels):
    model = build_model("dunet", input_channels=input_channels, n_filters=[4, 4, 4, 4, 4], n_filters_3d=[4, 4, 4])
    assert model(torch.randn(1, input_channels, 20, 36)).shape == (1, 1, 20, 36)


def test_pad_and_crop_round_trip():
    x = torch.randn(1, 2, 45, 53)
    for mode in ("replicate", "zeros"):
        padded = pad_to_multiple(x, 16, mode)
        assert padded.shape[-2:] == (48, 64)
        assert torch.equal(crop_to_size(padded, (45, 53)), x)
    assert pad_to_multiple(torch.zeros(1, 1, 32, 48), 16).shape == (1, 1, 32, 48)


def test_even_kernel_convolution_keeps_size_like_keras_same():
    layer = ConvNormActivation(3, 5, kernel_size=2, activation=None, use_batch_norm=False)
    assert layer(torch.randn(1, 3, 7, 9)).shape == (1, 5, 7, 9)
    strided = ConvNormActivation(3, 5, kernel_size=3, stride=4, use_batch_norm=True)
    assert strided(torch.randn(2, 3, 32, 48)).shape == (2, 5, 8, 12)


def test_conv_lstm_forget_bias_and_output_shape():
    cell = ConvLSTM2d(3, 6)
    bias = cell.input_conv.bias
    assert torch.equal(bias[6:12], torch.ones(6)) and bias[:6].abs().sum() == 0 and bias[12:].abs().sum() == 0
    hidden = cell([torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7)])
    assert hidden.shape == (2, 6, 5, 7) and hidden.abs().max() < 1
