"""Each baseline's own training recipe as its release trained it (``--recipe xnet_release`` ...).

Beside the like-for-like recipes of :mod:`spinseg.recipes.named` (SPiN's loss, optimiser and schedule
for every model), these use the baseline's loss, optimiser, learning rate, batch size, input size and
regularisation as read from the release's training code (sources in ``note`` and in
``docs/release_recipes.md``). Schedules are in this trainer's epochs: one pass over the training
*volumes*; the release's Keras/KiU-Net epochs were one pass over every *slice*, 189 times as many
samples, so E release epochs are 189·E epochs here.
"""
from __future__ import annotations

from spinseg.recipes.named import DIVIDE_BY_100, ATLAS_STANDARD, ModelRecipe

SLICES_PER_VOLUME = 189  # one release epoch = 189 of this trainer's epochs

NO_AUGMENTATION = {"augmentation_probabilities": [0.0], "augmentation_schedule": [-1], "augmentation_noise_spread": 0.0}


def release_epochs(epochs: int) -> list[int]:
    """A one-entry schedule ending after ``epochs`` release epochs, in this trainer's epochs."""
    return [epochs * SLICES_PER_VOLUME]


RELEASE_RECIPES = {
    "xnet_release": ModelRecipe(
        "xnet", "X-Net (release recipe)", 1,
        train={**DIVIDE_BY_100, **NO_AUGMENTATION, "loss_func_segmentation": "bce_dice", "optimizer": "adam",
               "learning_rates": [1e-3], "learning_schedule": release_epochs(100), "n_batch": 8,
               "crop_shape": [192, 224], "w_weight_decay": 2e-5,
               "checkpoint_path": "trained_xnet/atlas/xnet_release_traintest"},
        note="BCE + Dice, Adam 1e-3, batch 8, 224x192 crop, L2 1e-5 on kernels (main.py:19,35; loss.py:15-16; model.py:17)",
    ),
    "clcinet_release": ModelRecipe(
        "clcinet", "CLCI-Net (release recipe)", 1,
        train={**DIVIDE_BY_100, **NO_AUGMENTATION, "loss_func_segmentation": "soft_dice", "optimizer": "adam",
               "learning_rates": [1e-4], "learning_schedule": release_epochs(100), "n_batch": 8,
               "crop_shape": [176, 224], "checkpoint_path": "trained_clcinet/atlas/clcinet_release_traintest"},
        note="soft Dice, Adam 1e-4, batch 8, 224x176 crop, no L2 (main.py:21,41; CLCI_Net.py:6-13; custom_layer.py:7)",
    ),
    "dunet_release": ModelRecipe(
        "dunet", "D-UNet (release recipe)", 5,
        train={**DIVIDE_BY_100, "loss_func_segmentation": "eml", "optimizer": "sgd", "learning_rates": [1e-5],
               "learning_schedule": release_epochs(150), "n_batch": 36, "augmentation_probabilities": [1.0],
               "augmentation_schedule": [-1], "augmentation_rotate": 20.0, "augmentation_flip_type": ["horizontal"],
               "augmentation_resize_and_pad": [0.8, 1.2], "augmentation_noise_spread": 0.0,
               "checkpoint_path": "trained_dunet/atlas/dunet_release_traintest"},
        note="focal + Dice 'EML', SGD 1e-5, batch 36, 150 epochs, rotation 20, zoom 0.2, horizontal flip "
        "(Stroke_segment.py:262-263,278,306-307,328; Statistics.py:95-108); 5 slices here, the release 4",
    ),
    "kiunet_release": ModelRecipe(
        "kiunet", "KiU-Net (release recipe)", 1,
        train={**ATLAS_STANDARD, "loss_func_segmentation": "two_class_cross_entropy", "optimizer": "adam",
               "learning_rates": [1e-4], "learning_schedule": release_epochs(20), "n_batch": 4, "w_weight_decay": 1e-5,
               "crop_shape": [128, 128], "augmentation_probabilities": [1.0], "augmentation_schedule": [-1],
               "augmentation_flip_type": ["horizontal"], "augmentation_rotate": 0.0,
               "augmentation_resize_and_pad": [1.0, 1.0], "augmentation_noise_spread": 0.0,
               "checkpoint_path": "trained_kiunet/atlas/kiunet_release_traintest"},
        note="2-class cross-entropy, Adam 1e-4 with weight decay 1e-5, batch 4, 20 epochs, 128x128, flip 0.5 "
        "(bash/KiU-Net/train.sh; train.py:135,173-176; metrics.py:26-37)",
    ),
}
