"""`rearrange`: einops' rearrange, written so that torch.compile does not trace einops itself.

Our modules write every change of layout as an einops pattern, because the pattern documents the
frame folding at the call site (STYLE.md): `rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)`.
Called directly, `einops.rearrange` makes torch.compile slow: dynamo (torch 2.14, einops 0.8.2)
traces into einops' pattern parser on every call (213 calls in a forward of the tiny UNet, 298 in
svd_xt's), and tracing the tiny UNet took about 3 times as long as with this module (30 s against
11 s on one CPU core; diffusers' UNet, which has no einops, 12 s).

So our modules import `rearrange` from here. In eager it calls `einops.rearrange`; while dynamo
traces, it calls `torch.ops.svd_core.rearrange` instead, an operator with a single
CompositeImplicitAutograd kernel that calls `einops.rearrange`. Dynamo writes it into the graph as
one call (running the kernel on fake tensors for the output shape, where einops' cache answers);
AOT autograd and inductor trace the kernel into the aten reshape/permute ops einops emits, so the
compiled forward and backward are those of plain reshapes. Eager callers never reach the operator.

Why not `torch.compiler.allow_in_graph` on a wrapper: it compiles about as fast, but registering
needs `import torch._dynamo` when svd_core is imported (seconds, which svd_core otherwise avoids:
tests/test_tensor_reader.py), and registering `einops.rearrange` itself would change it for every
other library. `torch.compiler.nonstrict_trace` has the same import and compiled slower (19 s), and
a hand-written pattern parser emitting reshape/permute, traced by dynamo, too (15 s).
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
