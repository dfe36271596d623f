"""SPiN against the release: parameter count, state-dict layout, and outputs of the release's code."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinseg.models.checkpoint import load_model
from spinseg.errors import UserInputError
from spinseg.models import build_model
from spinseg.models.spin import SPiN, SPiNConfig

FIXTURES = Path(__file__).parent / "fixtures"


def manifest(name):
    return json.loads((FIXTURES / name).read_text())


def test_paper_config_has_the_release_parameter_count_and_state_dict_layout():
    reference = manifest("spin_paper_config_manifest.json")
    model = build_model("spin", **reference["config"])
    assert sum(p.numel() for p in model.parameters()) == reference["n_parameters"] == 5_263_808
    for name, keys in reference["state_dicts"].items():
        ours = {key: list(value.shape) for key, value in model.release_state_dicts()[name].items()}
        assert ours == keys, name


def test_defaults_are_the_paper_config():
    assert SPiNConfig().to_dict() == manifest("spin_paper_config_manifest.json")["config"]


def test_release_checkpoint_reproduces_release_outputs():
    config = manifest("spin_small_config.json")["config"]
    model = load_model(FIXTURES / "spin_small_original_format.pth", "spin", **config)
    reference = np.load(FIXTURES / "spin_small_io.npz")
    with torch.no_grad():
        outputs = model.forward_all(torch.from_numpy(reference["input"]))
    assert outputs["logits"].shape == (2, 1, 45, 53)
    assert outputs["logits_2x"].shape == (2, 1, 90, 106)
    np.testing.assert_allclose(outputs["logits"].numpy(), reference["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(outputs["logits_2x"].numpy(), reference["logits_2x"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(197, 233), (45, 53), (31, 17), (64, 64)])
def test_output_has_input_size(size):
    torch.manual_seed(0)
    model = build_model("spin", **manifest("spin_small_config.json")["config"]).eval()
    with torch.no_grad():
        outputs = model.forward_all(torch.randn(1, 5, *size))
    assert outputs["logits"].shape == (1, 1, *size)
    assert outputs["logits_2x"].shape == (1, 1, 2 * size[0], 2 * size[1])
    assert outputs["subpixel_embedding"].shape == (1, 4, 2 * size[0], 2 * size[1])


def test_paper_config_forward_backward_at_atlas_slice_size():
    torch.manual_seed(0)
    model = build_model("spin")
    logits = model(torch.randn(1, 5, 197, 233))
    assert logits.shape == (1, 1, 197, 233)
    logits.mean().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


def test_learnable_downsampler_output_is_a_convex_combination_of_subpixel_logits():
    torch.manual_seed(0)
    model = SPiN(**manifest("spin_small_config.json")["config"]).eval()
    with torch.no_grad():
        outputs = model.forward_all(torch.randn(2, 5, 20, 22))
    blocks = torch.nn.functional.pixel_unshuffle(outputs["logits_2x"], 2)
    assert torch.all(outputs["logits"] <= blocks.amax(dim=1, keepdim=True) + 1e-6)
    assert torch.all(outputs["logits"] >= blocks.amin(dim=1, keepdim=True) - 1e-6)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserInputError, match="spin"):
        build_model("spin", n_filters_encoder_segmentation=[8, 8])
    with pytest.raises(UserInputError, match="unknown model name"):
        build_model("segformer")
    with pytest.raises(UserInputError, match="unknown SPiN config keys"):
        build_model("spin", n_filters_everything=3)
