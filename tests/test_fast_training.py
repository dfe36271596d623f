"""The optimised training path takes the same steps as plain eager training."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from spinseg.models.model_config import parse_model_config
from spinseg.acceleration.training import in_place_block_activations, prepare_training_model
from spinseg.models import build_model
from spinseg.models.blocks import AccurateBatchNorm2d

from conftest import SMALL_SPIN_CONFIG


def adam_steps(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, n_steps: int = 3) -> list[float]:
    """Plain training loop body; returns the losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(n_steps):
        loss = F.binary_cross_entropy_with_logits(model(images), targets, pos_weight=torch.tensor([1.5], dtype=images.dtype))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name,config", [("spin", SMALL_SPIN_CONFIG), ("unet", '{"n_filters_encoder_segmentation": [8, 16, 16, 16, 16], "n_filters_decoder_segmentation": [16, 16, 16, 8]}')])
def test_prepared_training_takes_the_plain_steps_in_float64(name, config):
    torch.manual_seed(0)
    model_config = parse_model_config(config)
    plain = build_model(name, **model_config).double().train()
    prepared = prepare_training_model(copy.deepcopy(plain), torch.device("cpu"), channels_last=True)
    assert any(isinstance(m, AccurateBatchNorm2d) for m in prepared.modules())
    assert prepared.state_dict().keys() == plain.state_dict().keys()
    images = torch.randn(4, plain.in_channels, 36, 44, dtype=torch.float64)
    targets = (torch.rand(4, 1, 36, 44) > 0.9).double()
    expected = adam_steps(plain, images, targets)
    actual = adam_steps(prepared, images.contiguous(memory_format=torch.channels_last), targets)
    assert expected[-1] != expected[0]  # the steps did train
    assert actual == pytest.approx(expected, rel=1e-10)
    for (key, value), other in zip(plain.state_dict().items(), prepared.state_dict().values()):
        torch.testing.assert_close(other, value, atol=1e-9, rtol=1e-9, msg=key)


def test_in_place_activations_lower_training_peak_memory_of_saved_tensors():
    """Autograd keeps fewer bytes for backward when block activations run in place."""
    torch.manual_seed(0)
    model = build_model("spin", **parse_model_config(SMALL_SPIN_CONFIG)).train()
    images = torch.randn(2, 5, 48, 56)

    def saved_bytes(network: torch.nn.Module) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            network(images).sum()
        return sum(storages.values())

    plain_bytes = saved_bytes(model)
    in_place_bytes = saved_bytes(in_place_block_activations(copy.deepcopy(model)))
    assert in_place_bytes < 0.95 * plain_bytes, (in_place_bytes, plain_bytes)
