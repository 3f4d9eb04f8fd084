"""The gated-GELU feed-forward of the transformer blocks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GEGLUFeedForward(nn.Module):
    """Linear to 2 x hidden, value * GELU(gate), linear back (Shazeer 2020, "GLU Variants").

    x (..., dim) -> (..., dim_out). hidden = mult * dim. The first half of `proj_in`'s output is the
    value and the second half the gate, as in both references; GELU is the exact (erf) one.

    Fast path (`fast_path`, on by default): the gate and the product are computed in place, in
    GELU's output while training and in `proj_in`'s own output at inference. A forward hook on
    `proj_in` then sees its output overwritten; with `fast_path = False` (or
    `svd_core.nn.use_fast_paths(model, False)`) the plain `value * gelu(gate)` runs instead.
    """

    fast_path: bool = True  # the in-place product; False: the plain, out-of-place one

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4) -> None:
        super().__init__()
        hidden = dim * mult
        self.proj_in = nn.Linear(dim, 2 * hidden)
        self.proj_out = nn.Linear(hidden, dim if dim_out is None else dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        if not self.fast_path:
            hidden = value * F.gelu(gate)
        elif torch.is_grad_enabled():
            # The product is taken in place in GELU's fresh output: one new tensor of the hidden
            # width instead of two (autograd-safe: GELU's backward reads its input, not its output).
            hidden = F.gelu(gate).mul_(value)
        else:
            # Inference: GELU and the product in place in the projection's gate half, no new
            # tensor of the hidden width at all (the same values up to float round-off).
            hidden = torch.ops.aten.gelu_(gate).mul_(value)
        return self.proj_out(hidden)
