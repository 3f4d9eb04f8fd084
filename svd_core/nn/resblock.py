"""Residual blocks: the 2D block of the UNet and VAE, and its temporal (Conv3d over frames) twin."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from .norm import GroupNorm32


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the time embedding, GroupNorm -> SiLU -> dropout -> conv, plus skip.

    Spatial (`temporal=False`): x (N, C_in, H, W), emb (N, E) or None -> (N, C_out, H, W), 3x3 convs.
    Temporal (`temporal=True`): x (B, C_in, F, H, W), emb (B, F, E) or None -> (B, C_out, F, H, W),
    convs with kernel (kernel_size, 1, 1): they mix frames only, never pixels. The official code calls
    this the `time_stack` of a video res block; diffusers `TemporalResnetBlock`.

    `emb_channels=None` gives the embedding-free block of the VAE. The skip is a 1x1 conv when the
    channel count changes, the identity otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        emb_channels: int | None = None,
        num_groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        temporal: bool = False,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.temporal = temporal
        if temporal:

            def conv(c_in: int, c_out: int) -> nn.Module:
                return nn.Conv3d(c_in, c_out, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0))
        else:

            def conv(c_in: int, c_out: int) -> nn.Module:
                return nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)

        self.norm1 = GroupNorm32(num_groups, in_channels, eps=eps)
        self.conv1 = conv(in_channels, out_channels)
        self.emb_proj = None if emb_channels is None else nn.Linear(emb_channels, out_channels)
        self.norm2 = GroupNorm32(num_groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_channels, out_channels)
        if in_channels == out_channels:
            self.skip = nn.Identity()
        elif temporal:
            self.skip = nn.Conv3d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with emb_channels and needs an embedding")
            e = self.emb_proj(F.silu(emb))
            if self.temporal:
                h = h + rearrange(e, "b f c -> b c f 1 1")  # per-frame embedding
            else:
                h = h + e[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h
