"""Every registered model remembers its constructor arguments: a checkpoint of a non-default
network loads back with ``load_model(path, name)`` alone and computes the same outputs."""
from __future__ import annotations

import json

import pytest
import torch

from spinseg.checkpoint import load_model, save_checkpoint
from spinseg.models import available_models, build_model

# Small, non-default widths (and one other non-width option each), so a load that fell back to the
# defaults would fail on the weights' shapes or compute something else.
SMALL_CONFIGS = {
    "spin": {"input_channels": 3, "n_filters_encoder_subpixel_embedding": [4, 4, 4], "n_filter_decoder_subpixel_embedding": 4,
             "output_channels_subpixel_embedding": 4, "n_filters_encoder_segmentation": [4, 8, 8, 8, 8],
             "n_filters_subpixel_guidance": [4, 4], "n_filters_decoder_segmentation": [8, 8, 8, 4, 4, 4],
             "n_filters_learnable_downsampler": [4, 4]},
    "unet": {"input_channels": 3, "n_filters_encoder_segmentation": [4, 4, 8, 8, 8],
             "n_filters_decoder_segmentation": [8, 8, 4, 4]},
    "dunet": {"input_channels": 3, "n_filters": [4, 4, 8, 8, 8], "n_filters_3d": [2, 2, 4], "squeeze_excitation_ratio": 2},
    "clcinet": {"input_channels": 3, "n_filters": [4, 4, 8, 8, 8], "aspp_filters": 4, "aspp_output_channels": 8,
                "fusion_expansion": 2},
    "kiunet": {"input_channels": 3, "n_filters": [4, 8], "n_filters_output": 4},
    "xnet": {"input_channels": 3, "n_filters": [8, 8, 16], "fsm_reduction": 4, "fsm_similarity": "softmax"},
}


def test_every_registered_model_has_a_small_config_here():
    assert set(SMALL_CONFIGS) == set(available_models())


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_a_non_default_model_saves_and_loads_without_restating_its_config(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, **SMALL_CONFIGS[name]).eval()
    # One uniform dict: every given argument is recorded as given, and the whole is JSON.
    config = json.loads(json.dumps(model.config))
    for key, value in SMALL_CONFIGS[name].items():
        assert config[key] == value, key
    default_keys = set(build_model(name).config)
    assert set(config) == default_keys  # defaults are bound too, so the record is complete

    save_checkpoint(tmp_path / f"{name}.pth", model)
    loaded = load_model(tmp_path / f"{name}.pth", name)
    assert loaded.config == model.config
    x = torch.randn(2, 3, 33, 35)
    with torch.no_grad():
        expected, found = model(x), loaded(x)
    assert expected.shape == (2, 1, 33, 35)
    torch.testing.assert_close(found, expected, rtol=0, atol=0)


def test_the_outermost_constructor_is_recorded():
    from spinseg.models.base import RemembersConfig

    class Inner(RemembersConfig):
        def __init__(self, width: int = 2, *, depth: int = 1):
            super().__init__()

    class Outer(Inner):
        def __init__(self, colour: str = "red", **overrides):
            super().__init__(width=5, **overrides)

    assert Inner(3).config == {"width": 3, "depth": 1}
    assert Outer(depth=4).config == {"colour": "red", "depth": 4}
    with pytest.raises(TypeError, match="not a JSON value"):
        Inner(width=object())
