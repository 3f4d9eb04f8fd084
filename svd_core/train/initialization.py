"""The initialization for training from scratch: `init_for_training`, for the VAE and the UNet."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import zero_module
from ..vae import VAE

# The VAE posterior's log-variance at the start of training (init_for_training).
INITIAL_LOGVAR = -8.0


@torch.no_grad()
def init_for_training(module: nn.Module) -> nn.Module:
    """Re-initialize a VAE or UNet (in place) so that training from scratch starts well; returns it.

    torch's default init shrinks the signal by about 1/sqrt(3) per layer, so after the dozen
    layers between an image and its reconstruction the output hardly depends on the input and
    training stalls. Instead: every conv and linear gets normal(0, 1/sqrt(fan_in)) weights and zero
    biases (variance preserving for a linear layer), except the layers that their block's
    constructor zeroes (`svd_core.nn.zero_module`: the last layer of every residual branch, i.e.
    res block conv2, VAE attention output, transformer proj_out, and the UNet's output conv), which
    stay at zero, so every residual block starts as the identity; the video decoder's temporal
    output conv starts as the identity over frames (centre tap 1); and the VAE's posterior
    log-variance starts at INITIAL_LOGVAR.

    The zeroed layers draw their normal weights too (in module order, like every layer) before they
    are put back to zero: each other layer then gets the same draws whichever layers start at zero.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Conv3d | nn.Linear):
            layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.weight[0].numel()))
            if layer.bias is not None:
                layer.bias.zero_()
            if getattr(layer, "zero_init", False):
                zero_module(layer)  # back to the zeros of its construction
    for vae in [m for m in module.modules() if isinstance(m, VAE)]:  # `module` or inside it
        # The posterior starts nearly deterministic (std e^(INITIAL_LOGVAR / 2) = 0.02): with
        # zero log-variance the decoder would train on latents buried in unit noise and learn
        # to ignore the fine detail (the triangle) that a noisy latent cannot carry.
        vae.quant_conv.bias[vae.cfg.latent_channels :] = INITIAL_LOGVAR
        if vae.decoder.temporal_conv_out is not None:
            weight = vae.decoder.temporal_conv_out.weight  # (C, C, k, 1, 1)
            weight.zero_()
            weight[:, :, weight.shape[2] // 2, 0, 0] = torch.eye(weight.shape[0])
    return module
