"""Group normalization computed in float32 whatever the tensor's dtype."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GroupNorm32(nn.GroupNorm):
    """`nn.GroupNorm` that normalizes in float32 and returns the input's dtype.

    The official UNet does the same (`GroupNorm32` in sgm): in half precision the variance of wide
    activations loses too many bits. In float32 this is exactly `nn.GroupNorm`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)  # half -> float32; float64 stays
        weight = None if self.weight is None else self.weight.to(compute)
        bias = None if self.bias is None else self.bias.to(compute)
        return F.group_norm(x.to(compute), self.num_groups, weight, bias, self.eps).to(x.dtype)
