"""Upsampling shared by the UNet decoder and the VAE decoder (their downsamplings differ in padding)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution: (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
