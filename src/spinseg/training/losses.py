"""Every training loss in one place: SPiN's and each baseline's as its release trained it.

All take ``logits`` (B, 1, H, W), the model's one output channel, and ``targets`` (B, 1, H, W) in {0, 1},
and return a scalar. The Keras baselines computed on sigmoid probabilities; here the same formulas are
written on logits where that keeps them finite (log-sigmoid instead of log(sigmoid)).

* ``cross_entropy`` (SPiN, U-Net): BCE with logits, positive class weighted (``w_positive_class``).
* ``bce_dice`` (X-Net, ``external_src/X-Net/loss.py``): Keras binary cross-entropy (probabilities
  clipped to [1e-7, 1 - 1e-7]) + 1 - 2·Σ(t·p) / (Σt + Σp), sums over the whole batch.
* ``soft_dice`` (CLCI-Net, ``external_src/CLCI-Net/CLCI_Net.py`` ``dice_coef_loss``):
  1 - (2·Σ(t·p) + 1) / (Σt² + Σp² + 1).
* ``eml`` (D-UNet, ``external_src/DUnet/Statistics.py`` ``EML``): focal loss (γ 1.1, α 0.48, p clipped
  below at 1e-7) minus log of the smoothed squared Dice above.
* ``two_class_cross_entropy`` (KiU-Net, ``external_src/KiU-Net/metrics.py`` ``LogNLLLoss``): softmax
  cross-entropy over the two classes; with the one logit z = lesion − background it equals BCE(z).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from spinseg.errors import UserInputError

KERAS_EPSILON = 1e-7


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, positive_weight: float = 1.5) -> torch.Tensor:
    """SPiN's loss: mean BCE with logits, lesion pixels weighted by ``positive_weight``."""
    weight = torch.tensor(positive_weight, device=logits.device, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)


def keras_binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Keras ``binary_crossentropy`` on sigmoid(logits) clipped to [1e-7, 1 - 1e-7], mean over pixels."""
    bound = math.log(KERAS_EPSILON)
    log_probability = F.logsigmoid(logits).clamp(min=bound, max=math.log1p(-KERAS_EPSILON))
    log_complement = F.logsigmoid(-logits).clamp(min=bound, max=math.log1p(-KERAS_EPSILON))
    return -(targets * log_probability + (1 - targets) * log_complement).mean()


def batch_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """X-Net's dice: 2·Σ(t·p) / (Σt + Σp) over the whole batch (0 when both sums are 0)."""
    probabilities = torch.sigmoid(logits)
    union = targets.sum() + probabilities.sum()
    return torch.where(union > 0, 2 * (targets * probabilities).sum() / union.clamp_min(1e-12), torch.zeros_like(union))


def bce_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """X-Net's ``get_loss``: Keras binary cross-entropy + (1 - batch dice)."""
    return keras_binary_cross_entropy(logits, targets) + 1 - batch_dice(logits, targets)


def smoothed_squared_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CLCI-Net's and D-UNet's dice: (2·Σ(t·p) + 1) / (Σt² + Σp² + 1) over the whole batch."""
    probabilities = torch.sigmoid(logits)
    return (2 * (targets * probabilities).sum() + 1) / ((targets * targets).sum() + (probabilities * probabilities).sum() + 1)


def soft_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CLCI-Net's ``dice_coef_loss``: 1 - smoothed squared dice."""
    return 1 - smoothed_squared_dice(logits, targets)


def eml(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 1.1, alpha: float = 0.48) -> torch.Tensor:
    """D-UNet's "EML": focal loss - log(smoothed squared dice), means over every pixel of the batch.

    Focal terms as the release wrote them: lesion pixels alpha·(1 - p)^gamma·(-log p), background
    pixels (1 - alpha)·p^gamma·(-log(1 - p)), with p clipped below at 1e-7; each term averaged over all
    pixels (the other class contributes 0).
    """
    probabilities = torch.sigmoid(logits).clamp_min(KERAS_EPSILON)
    log_probability = F.logsigmoid(logits).clamp_min(math.log(KERAS_EPSILON))
    lesion = targets == 1
    background = targets == 0
    lesion_terms = torch.where(lesion, alpha * (1 - probabilities).pow(gamma) * -log_probability, torch.zeros_like(logits))
    background_terms = torch.where(
        background, (1 - alpha) * probabilities.pow(gamma) * -F.logsigmoid(-logits), torch.zeros_like(logits)
    )
    focal = lesion_terms.mean() + background_terms.mean()
    return focal - torch.log(smoothed_squared_dice(logits, targets))


def two_class_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KiU-Net's loss: 2-class softmax cross-entropy, i.e. BCE with logits of z = lesion - background."""
    return F.binary_cross_entropy_with_logits(logits, targets)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": weighted_cross_entropy,
    "bce_dice": bce_dice,
    "soft_dice": soft_dice,
    "eml": eml,
    "two_class_cross_entropy": two_class_cross_entropy,
}


def build_loss(name: str, positive_weight: float = 1.5) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``name`` as a function (logits (B, 1, H, W), targets (B, 1, H, W)) -> scalar."""
    if name not in LOSSES:
        raise UserInputError(f"--loss_func_segmentation {name!r} is not one of {', '.join(LOSSES)}")
    if name == "cross_entropy":
        return lambda logits, targets: weighted_cross_entropy(logits, targets, positive_weight)
    return LOSSES[name]


def build_optimizer(name: str, parameters, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adam`` (SPiN, X-Net, CLCI-Net, KiU-Net) or ``sgd`` (D-UNet: Keras SGD, no momentum)."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=0.0, weight_decay=weight_decay)
    raise UserInputError(f"--optimizer {name!r} is not one of adam, sgd")
