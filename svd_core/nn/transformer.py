"""The two transformer blocks of the UNet: one attends over pixels, the other over frames.

Both are pre-norm (LayerNorm, eps 1e-5, before every sub-layer) with residual connections, and
both use the gated-GELU feed-forward. Official names: `BasicTransformerBlock` and
`VideoTransformerBlock`; diffusers: `BasicTransformerBlock` and `TemporalBasicTransformerBlock`.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .feedforward import GEGLUFeedForward


class SpatialTransformerBlock(nn.Module):
    """Self-attention over the pixels of one frame, cross-attention to the context, feed-forward.

    x (N, L, dim) with N = B*F frames of L = H*W pixels; context (N, S, context_dim) -> (N, L, dim).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, head_dim)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, head_dim, context_dim=context_dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_norm(x))
        x = x + self.cross_attn(self.cross_attn_norm(x), context)
        return x + self.ff(self.ff_norm(x))


class TemporalTransformerBlock(nn.Module):
    """A feed-forward, self-attention over the frames of one pixel, cross-attention, feed-forward.

    x (N, F, dim) with N = B*H*W pixel columns of F frames; context (N, S, context_dim)
    -> (N, F, dim).

    SVD builds it with the extra input feed-forward (official `extra_ff_mix_layer: True`), which is
    residual because its width equals the block's (official `is_res`; diffusers the same).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.ff_in_norm = nn.LayerNorm(dim)
        self.ff_in = GEGLUFeedForward(dim)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, head_dim)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, head_dim, context_dim=context_dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.ff_in(self.ff_in_norm(x))
        x = x + self.self_attn(self.self_attn_norm(x))
        x = x + self.cross_attn(self.cross_attn_norm(x), context)
        return x + self.ff(self.ff_norm(x))
