"""Each training loss against a value computed by hand on two pixels, and the trainer's hook for them.

The two pixels: logits 0 and ln 3, i.e. probabilities p = 0.5 (background, t = 0) and 0.75 (lesion, t = 1).
"""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL_SPIN_CONFIG, write_volume_set
from spinseg.errors import UserInputError
from spinseg.recipes.config import LOSS_NAMES, TrainConfig, validate_train_config
from spinseg.recipes.named import train_defaults
from spinseg.recipes.named import RELEASE_RECIPES
from spinseg.training.losses import LOSSES, build_loss, build_optimizer

LOGITS = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)
TARGETS = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
# -ln(1 - 0.5) and -ln(0.75): the two pixels' cross-entropies.
CE_BACKGROUND, CE_LESION = math.log(2.0), -math.log(0.75)


def loss(name: str) -> float:
    return build_loss(name)(LOGITS, TARGETS).item()


def test_spin_weighted_cross_entropy_by_hand():
    assert loss("cross_entropy") == pytest.approx((CE_BACKGROUND + 1.5 * CE_LESION) / 2, rel=1e-6)


def test_xnet_bce_plus_dice_by_hand():
    dice = 2 * 0.75 / (1 + (0.5 + 0.75))  # 2·Σtp / (Σt + Σp)
    assert loss("bce_dice") == pytest.approx((CE_BACKGROUND + CE_LESION) / 2 + 1 - dice, rel=1e-6)


def test_clcinet_soft_dice_by_hand():
    dice = (2 * 0.75 + 1) / (1 + (0.5**2 + 0.75**2) + 1)  # (2·Σtp + 1) / (Σt² + Σp² + 1)
    assert loss("soft_dice") == pytest.approx(1 - dice, rel=1e-6)


def test_dunet_eml_by_hand():
    dice = (2 * 0.75 + 1) / (1 + (0.5**2 + 0.75**2) + 1)
    lesion_term = 0.48 * (1 - 0.75) ** 1.1 * -math.log(0.75)  # the lesion pixel; the other contributes 0
    background_term = 0.52 * 0.5**1.1 * -math.log(1 - 0.5)
    focal = lesion_term / 2 + background_term / 2  # each averaged over both pixels
    assert loss("eml") == pytest.approx(focal - math.log(dice), rel=1e-6)


def test_kiunet_two_class_cross_entropy_equals_softmax_over_both_channels():
    assert loss("two_class_cross_entropy") == pytest.approx((CE_BACKGROUND + CE_LESION) / 2, rel=1e-6)
    # With the channels (background 0, lesion z), softmax cross-entropy is the same number.
    two_channels = torch.cat([torch.zeros_like(LOGITS), LOGITS], dim=1)
    assert F.cross_entropy(two_channels, TARGETS[:, 0].long()).item() == pytest.approx(loss("two_class_cross_entropy"), rel=1e-6)


def test_losses_stay_finite_on_saturated_logits():
    logits = torch.tensor([-80.0, 80.0, 80.0, -80.0]).reshape(1, 1, 2, 2).requires_grad_()
    targets = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(1, 1, 2, 2)
    for name in LOSSES:
        value = build_loss(name)(logits, targets)
        value.backward()
        assert math.isfinite(value.item()) and torch.isfinite(logits.grad).all(), name
        logits.grad = None


def test_config_names_match_the_losses_and_unknown_names_are_refused():
    assert set(LOSS_NAMES) == set(LOSSES)
    with pytest.raises(UserInputError, match="not one of"):
        build_loss("hinge")
    with pytest.raises(UserInputError, match="--optimizer 'rmsprop'"):
        validate_train_config(replace(TrainConfig(), optimizer="rmsprop"))
    assert isinstance(build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], 1e-5, 0.0), torch.optim.SGD)


def test_release_recipes_are_valid_and_differ_from_like_for_like():
    for name, model_recipe in RELEASE_RECIPES.items():
        defaults = train_defaults(name)
        defaults.pop("model_config")
        validate_train_config(replace(TrainConfig(), **defaults))
        assert defaults["loss_func_segmentation"] != "cross_entropy"
        assert defaults["checkpoint_path"] != train_defaults(model_recipe.model)["checkpoint_path"]
    assert train_defaults("dunet_release")["optimizer"] == "sgd"


def test_trainer_builds_the_named_loss_and_optimizer(tmp_path):
    from spinseg.training.trainer import train

    scans, masks = write_volume_set(tmp_path / "data", 2, seed=1)
    config = TrainConfig(
        train_multimodal_scan_paths=str(scans), train_ground_truth_path=str(masks), model_config=SMALL_SPIN_CONFIG,
        n_batch=2, learning_rates=[1e-3], learning_schedule=[2], n_checkpoint=2, n_validation=0, n_workers=0,
        checkpoint_path=str(tmp_path / "run"), crop_shape=[24, 24], loss_func_segmentation="eml", optimizer="sgd",
    )
    summary = train(config)
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    saved = torch.load(tmp_path / "run" / "checkpoints" / "model-00000002.pth", weights_only=False)
    # SGD without momentum keeps no per-parameter state, Adam would keep two moments.
    assert saved["optimizer_state_dict"]["state"] == {}
