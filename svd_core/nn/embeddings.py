"""Sinusoidal embeddings of scalars (noise level, frame index, fps, motion bucket, cond_aug)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a 1-D tensor of scalars: (N,) -> (N, dim), float32.

    Frequencies exp(-ln(max_period) * i / half) for i < half = dim // 2, cosines first, then sines
    (the official order; diffusers gets it with flip_sin_to_cos=True, downscale_freq_shift=0).
    An odd `dim` gets one zero column at the end.
    """
    if values.ndim != 1:
        raise ValueError(
            f"timestep_embedding expects a 1-D tensor (N,), got shape {tuple(values.shape)}"
        )
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=values.device)
    freqs = torch.exp(
        -math.log(max_period) * steps / half
    )  # this order of operations, as both references
    args = values.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _as_batch(value: float | torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.ndim > 1:
        raise ValueError(
            f"{name} must be a number or a 1-D tensor (B,), got shape {tuple(tensor.shape)}"
        )
    return tensor.reshape(-1)


def embed_added(
    fps_id: float | torch.Tensor,
    motion_bucket_id: float | torch.Tensor,
    cond_aug: float | torch.Tensor,
    dim: int = 256,
) -> torch.Tensor:
    """The added conditioning vector: sinusoidal embeddings of the three scalars, concatenated.

    Each argument is a number or a (B,) tensor (numbers broadcast to the batch) -> (B, 3 * dim).
    The order fps_id, motion_bucket_id, cond_aug is the official conditioner's order; the UNet's
    `label_emb` MLP consumes the result. Note fps_id is the frame rate minus one (DESIGN.md).
    """
    parts = [
        _as_batch(fps_id, "fps_id"),
        _as_batch(motion_bucket_id, "motion_bucket_id"),
        _as_batch(cond_aug, "cond_aug"),
    ]
    batch = max(p.numel() for p in parts)
    for name, p in zip(("fps_id", "motion_bucket_id", "cond_aug"), parts, strict=True):
        if p.numel() not in (1, batch):
            sizes = [q.numel() for q in parts]
            raise ValueError(
                f"{name} has {p.numel()} values; batch sizes of the three differ: {sizes}"
            )
    parts = [p.expand(batch) for p in parts]
    return torch.cat([timestep_embedding(p, dim) for p in parts], dim=-1)


class EmbeddingMLP(nn.Module):
    """Linear -> SiLU -> Linear: turns a sinusoidal embedding into the network's embedding.

    The hidden width is out_dim (the UNet's time and vector MLPs) unless `hidden_dim` is given
    (the temporal transformers' frame-position MLP, C -> 4C -> C).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = out_dim if hidden_dim is None else hidden_dim
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
