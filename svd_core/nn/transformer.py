"""The two transformer blocks of the UNet: one attends over pixels, the other over frames.

Both are pre-norm (LayerNorm, eps 1e-5, before every sub-layer) with residual connections, and
both use the gated-GELU feed-forward. Official names: `BasicTransformerBlock` and
`VideoTransformerBlock`; diffusers: `BasicTransformerBlock` and `TemporalBasicTransformerBlock`.

Residuals are added in place into the sub-layer's fresh output (`f(x).add_(x)`, the same sum as
x + f(x)): one large tensor less per sub-layer, and safe for autograd, since a linear layer does not
keep its output for the backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, reads_one_key
from .feedforward import GEGLUFeedForward


def add_cross_attention(
    x: torch.Tensor, norm: nn.LayerNorm, attention: Attention, context: torch.Tensor
) -> torch.Tensor:
    """x + attention(norm(x), context); the norm is skipped when the attention does not read its
    queries (one context token at inference, `reads_one_key`)."""
    queries = x if reads_one_key(context) else norm(x)
    return x + attention(queries, context)


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
        x = self.self_attn(self.self_attn_norm(x)).add_(x)
        x = add_cross_attention(x, self.cross_attn_norm, self.cross_attn, context)
        return self.ff(self.ff_norm(x)).add_(x)


class TemporalTransformerBlock(nn.Module):
    """A feed-forward, self-attention over the frames of one pixel, cross-attention, feed-forward.

    x (B, H*W, F, dim): B*H*W pixel columns of F frames; context (B, 1, S, context_dim), one per
    clip, shared by its pixel columns (or any shape whose leading dims broadcast to x's)
    -> (B, H*W, F, dim).

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
        x = self.ff_in(self.ff_in_norm(x)).add_(x)
        x = self.self_attn(self.self_attn_norm(x)).add_(x)
        x = add_cross_attention(x, self.cross_attn_norm, self.cross_attn, context)
        return self.ff(self.ff_norm(x)).add_(x)
