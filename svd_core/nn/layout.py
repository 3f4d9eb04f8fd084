"""`rearrange`: einops' rearrange, written so that torch.compile does not trace einops itself.

Our modules write every change of layout as an einops pattern, because the pattern documents the
frame folding at the call site (STYLE.md): `rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)`.
Called directly, `einops.rearrange` makes torch.compile slow: dynamo (torch 2.14, einops 0.8.2)
traces into einops' pattern parser on every call, about 0.5 s of tracing per call, two minutes for
the 213 calls of the tiny UNet (298 in svd_xt's).

So our modules import `rearrange` from here. It is `einops.rearrange` itself, unless dynamo is
tracing: then it is `torch.ops.svd_core.rearrange`, an operator with a single
CompositeImplicitAutograd kernel that calls `einops.rearrange`. Dynamo writes it into the graph as
one call (running the kernel on fake tensors for the output shape, where einops' cache answers);
AOT autograd and inductor trace the kernel into the aten reshape/permute ops einops emits, so the
compiled forward and backward are those of plain reshapes. Eager callers never reach the operator.

Why not `torch.compiler.allow_in_graph` on a wrapper: it compiles about as fast, but registering
needs `import torch._dynamo` when svd_core is imported (seconds, which svd_core otherwise avoids),
and registering `einops.rearrange` itself would change it for every other library.
"""

from __future__ import annotations

import einops
import torch

# The operator's definition lives as long as this module (a `Library` unregisters when collected).
_LIBRARY = torch.library.Library("svd_core", "DEF")
# (a) marks the output as possibly a view of the input, as for aten::reshape.
_LIBRARY.define(
    "rearrange(Tensor(a) tensor, str pattern, str[] axis_names, SymInt[] axis_lengths) -> Tensor(a)"
)


def _rearrange_kernel(
    tensor: torch.Tensor, pattern: str, axis_names: list[str], axis_lengths: list[int]
) -> torch.Tensor:
    """The operator's kernel: einops.rearrange, the axis lengths given as two lists."""
    return einops.rearrange(tensor, pattern, **dict(zip(axis_names, axis_lengths, strict=True)))


_LIBRARY.impl("rearrange", _rearrange_kernel, "CompositeImplicitAutograd")
_rearrange_op = torch.ops.svd_core.rearrange.default


def rearrange(tensor: torch.Tensor, pattern: str, **axes_lengths: int) -> torch.Tensor:
    """`einops.rearrange(tensor, pattern, **axes_lengths)`, cheap for torch.compile to trace.

    tensor: any shape matching the left side of `pattern`, e.g. (B*F, C, H, W) for
    "(b f) c h w -> b c f h w" with f=F; returns the right side's shape, (B, C, F, H, W) here, a view
    of `tensor` where einops returns one. Same results and errors as einops (an `EinopsError` names
    the pattern, the input shape and the lengths given). Under torch.compile, one operator in the
    graph that AOT autograd decomposes into reshape/permute (see the module docstring).
    """
    if torch.compiler.is_compiling():
        return _rearrange_op(tensor, pattern, list(axes_lengths), list(axes_lengths.values()))
    return einops.rearrange(tensor, pattern, **axes_lengths)
