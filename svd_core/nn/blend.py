"""The learned blend that merges a spatial path with its temporal twin."""

from __future__ import annotations

import torch
from torch import nn

from ..config import MERGE_STRATEGIES


class AlphaBlend(nn.Module):
    """Return alpha * first + (1 - alpha) * second, with alpha from `mix_factor`.

    Strategies (official `AlphaBlender`):
      - "fixed": alpha = mix_factor, a buffer (not trained);
      - "learned": alpha = sigmoid(mix_factor), a parameter;
      - "learned_with_images": as "learned", but alpha = 1 (first path only) for the frames that
        `image_only_indicator` marks as independent images.

    The caller chooses the order, and the references differ: the UNet blends
    alpha * spatial + (1 - alpha) * temporal, the temporal VAE decoder alpha * temporal + (1 - alpha) * spatial.

    Tensors are (B*F, ...) with frames folded into the batch; `image_only_indicator` is (B, F).
    """

    def __init__(self, mix_factor: float = 0.5, strategy: str = "learned_with_images") -> None:
        super().__init__()
        if strategy not in MERGE_STRATEGIES:
            raise ValueError(
                f"unknown blend strategy {strategy!r}; expected one of {MERGE_STRATEGIES}"
            )
        self.strategy = strategy
        value = torch.tensor([float(mix_factor)])
        if strategy == "fixed":
            self.register_buffer("mix_factor", value)
        else:
            self.mix_factor = nn.Parameter(value)

    def alpha(self, image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        """The blend weight: shape (1,), or (B*F,) for "learned_with_images" given an indicator."""
        if self.strategy == "fixed":
            return self.mix_factor
        alpha = torch.sigmoid(self.mix_factor)
        if self.strategy == "learned_with_images" and image_only_indicator is not None:
            is_image = image_only_indicator.bool().reshape(-1)
            alpha = torch.where(is_image, torch.ones_like(alpha), alpha)
        return alpha

    def forward(
        self,
        first: torch.Tensor,
        second: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = (-1, *([1] * (first.ndim - 1)))  # broadcast over everything but B*F
        alpha = self.alpha(image_only_indicator)
        alpha = alpha.to(torch.promote_types(alpha.dtype, torch.float32))  # float64 stays
        # 1 - alpha is formed in float32 before rounding to a half type (as the official code
        # does with its float32 alpha; diffusers rounds alpha first); the same in float32.
        first_weight = alpha.to(first.dtype).reshape(shape)
        second_weight = (1.0 - alpha).to(first.dtype).reshape(shape)
        # The second product is added in place into the first: the same sum, one tensor less.
        return (first_weight * first).add_(second_weight * second)
