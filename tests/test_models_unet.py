"""The release's U-Net: both encoder configs match the release's parameter counts and key layout."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinseg.models.checkpoint import load_model
from spinseg.models import build_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "manifest_name, parameters",
    [("unet_published_config_manifest.json", 31_385_216), ("unet_train_recipe_manifest.json", 19_586_688)],
)
def test_unet_matches_release_manifest(manifest_name, parameters):
    reference = json.loads((FIXTURES / manifest_name).read_text())
    model = build_model("unet", **reference["config"])
    assert sum(p.numel() for p in model.parameters()) == reference["n_parameters"] == parameters
    for name, keys in reference["state_dicts"].items():
        assert {k: list(v.shape) for k, v in model.release_state_dicts()[name].items()} == keys


def test_unet_default_is_the_published_config():
    assert sum(p.numel() for p in build_model("unet").parameters()) == 31_385_216


def test_unet_release_format_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", n_filters_encoder_segmentation=[8, 8, 16, 16, 16], n_filters_decoder_segmentation=[16, 16, 8, 8]).eval()
    path = tmp_path / "unet_release_format.pth"
    torch.save({"train_step": 7, **model.release_state_dicts()}, path)
    loaded = load_model(path, "unet", n_filters_encoder_segmentation=[8, 8, 16, 16, 16], n_filters_decoder_segmentation=[16, 16, 8, 8])
    x = torch.randn(2, 1, 45, 53)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded(x).shape == (2, 1, 45, 53)


def test_unet_reproduces_the_release_forward():
    """Weights saved by the release's own U-Net code: both outputs match its forward pass."""
    config = json.loads((FIXTURES / "unet_small_config.json").read_text())["config"]
    model = load_model(FIXTURES / "unet_small_original_format.pth", "unet", **config)
    reference = np.load(FIXTURES / "unet_small_io.npz")
    with torch.no_grad():
        outputs = model.forward_all(torch.from_numpy(reference["input"]))
    for key in ("logits_half", "logits"):
        expected = torch.from_numpy(reference[key])
        assert outputs[key].shape == expected.shape
        assert torch.allclose(outputs[key], expected, atol=1e-5, rtol=0), key
