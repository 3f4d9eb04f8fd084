"""Multi-head attention through `torch.nn.functional.scaled_dot_product_attention`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layout import rearrange  # einops.rearrange, cheap for torch.compile to trace


def reads_one_key(context: torch.Tensor | None) -> bool:
    """True when `Attention` answers without its queries: one context token, no gradient recorded.

    Softmax over a single key is exactly 1 (for a finite score: finite x and weights), so every
    query receives that key's value: attention(x, context) = to_out(to_v(context)), whatever x.
    This holds without a mask and without attention dropout (`Attention` has none): a masked call
    never takes this path, and a module that gains dropout must not either. With gradients recorded the full computation runs instead, so that
    to_q and to_k still get their (zero) gradients: AdamW's weight decay and
    DistributedDataParallel expect every parameter to have one.
    """
    return context is not None and context.shape[-2] == 1 and not torch.is_grad_enabled()


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of `shape` expands to `target` (same length; sizes equal or 1)."""
    return len(shape) == len(target) and all(
        s in (1, t) for s, t in zip(shape, target, strict=True)
    )


class Attention(nn.Module):
    """Self-attention (context=None) or cross-attention to `context`.

    x (..., L, query_dim), context (..., S, context_dim) -> (..., L, query_dim). The leading dims of
    `context` broadcast against those of x: the temporal blocks pass one (B, 1, S, D) context for
    their (B, H*W, F, C) pixel columns. Queries, keys and values have no bias in the UNet (both
    references); the VAE's single-head attention uses `qkv_bias=True`.

    With one context token, no mask and no gradient recorded (`reads_one_key`) the result is one
    row per context broadcast to x's shape, a view that must not be written into in place. That
    shortcut is the module's fast path; `fast_path = False` (or `svd_core.nn.use_fast_paths(model,
    False)`) always runs the plain SDPA computation.

    mask: an optional attention mask for `scaled_dot_product_attention` (boolean, True = attend,
    or additive float), broadcastable to (N, heads, L, S), N = x's leading dims flattened. A mask
    always takes the plain path.
    """

    fast_path: bool = True  # the one-key shortcut of `reads_one_key`; False: always plain SDPA

    def __init__(
        self,
        query_dim: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if context is not None and not _broadcasts(context.shape[:-2], x.shape[:-2]):
            raise ValueError(
                f"Attention: context of shape {tuple(context.shape)} does not fit x of shape "
                f"{tuple(x.shape)}; expected (..., S, context_dim) with leading dims that are "
                f"{tuple(x.shape[:-2])} or broadcast to them"
            )
        if self.fast_path and mask is None and reads_one_key(context):
            # Exact: the softmax weight of the only key is 1 (see `reads_one_key`). One row per
            # context, broadcast (as a view) to every query.
            return self.to_out(self.to_v(context)).expand(x.shape)
        context = x if context is None else context
        *lead, length, _ = x.shape
        # Keys and values are projected before the context is broadcast to x's leading dims, so
        # that a shared context is projected once, not once per pixel column.
        k, v = (layer(context) for layer in (self.to_k, self.to_v))
        k, v = (t.expand(*lead, *t.shape[-2:]).reshape(-1, *t.shape[-2:]) for t in (k, v))
        q = self.to_q(x).reshape(-1, length, k.shape[-1])
        # (N, L, heads * d) -> (N, heads, L, d), N = the leading dims flattened
        q, k, v = (rearrange(t, "n l (h d) -> n h l d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = rearrange(out, "n h l d -> n l (h d)").reshape(*lead, length, -1)
        return self.to_out(out)
