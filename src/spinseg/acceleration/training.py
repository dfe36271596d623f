"""The optimised training path: the same steps as plain eager training, in less time and memory.

Levers (measured by ``python -m spinseg.benchmark``, see docs/performance.md):

* channels-last (NHWC) weights and inputs, which oneDNN's (and cuDNN's) convolutions and their
  backward passes prefer; on a 2-core CPU this is most of the gain;
* on the CPU, exactly summed batch statistics (:class:`~spinseg.models.blocks.AccurateBatchNorm2d`):
  PyTorch's channels-last batch-norm kernel otherwise accumulates them with visible rounding error;
* the activation at the end of each conv block runs in place: its input is a tensor no one else
  holds (the batch norm's or convolution's fresh output, which their backward passes do not
  need), so autograd keeps one feature map per block fewer.

None of these changes the model's math or its state-dict keys.
"""
from __future__ import annotations

import torch
from torch import nn

from spinseg.acceleration.inference import to_channels_last
from spinseg.models.blocks import Conv2dBlock, accurate_batch_norms
from spinseg.models.layers_extra import ConvNormActivation

# Activations whose in-place backward PyTorch supports from their output alone.
IN_PLACE_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU)


def in_place_block_activations(model: nn.Module) -> nn.Module:
    """Sets ``inplace=True`` on the final activation of every conv block of ``model``; returns ``model``.

    Only blocks whose activation input is internal to the block (:class:`Conv2dBlock`,
    :class:`ConvNormActivation`): elsewhere a shared activation module could overwrite a tensor
    that is used again (a skip connection, a residual sum).
    """
    for module in model.modules():
        if isinstance(module, (Conv2dBlock, ConvNormActivation)) and isinstance(module.activation, IN_PLACE_ACTIVATIONS):
            if not (isinstance(module.activation, nn.LeakyReLU) and module.activation.negative_slope < 0):
                module.activation.inplace = True
    return model


def prepare_training_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """Applies the training levers to ``model`` in place (parameters keep their identity); returns it.

    ``model`` should already be on ``device``. With ``channels_last`` the weights become NHWC
    (feed inputs with ``.contiguous(memory_format=torch.channels_last)``) and, on a CPU, batch
    norms compute exact batch statistics; block activations run in place either way.
    """
    in_place_block_activations(model)
    if channels_last:
        to_channels_last(model)  # also handles D-UNet's 3-D weights
        if device.type == "cpu":
            accurate_batch_norms(model)
    return model
