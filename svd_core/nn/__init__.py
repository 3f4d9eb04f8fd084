"""Small blocks shared by the UNet, the VAE and the image encoder."""

from torch import nn

from .attention import Attention
from .blend import AlphaBlend
from .embeddings import EmbeddingMLP, embed_added, timestep_embedding
from .feedforward import GEGLUFeedForward
from .init import zero_module
from .norm import GroupNorm32
from .resample import Upsample
from .resblock import ResBlock

__all__ = [
    "AlphaBlend",
    "Attention",
    "EmbeddingMLP",
    "GEGLUFeedForward",
    "GroupNorm32",
    "ResBlock",
    "Upsample",
    "embed_added",
    "timestep_embedding",
    "use_fast_paths",
    "zero_module",
]


def use_fast_paths(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn the fast paths of every block inside `module` (a UNet, a VAE, a whole SVDModel) on or
    off; returns `module`.

    The blocks with one say so in their docstring and have a `fast_path` flag: Attention (the
    one-key shortcut), GEGLUFeedForward (the in-place product), ResBlock (temporal convs as
    matrix products, `conv_over_frames`); a block of your own joins in by having the flag. Off,
    each runs its plain, readable computation (SDPA, an out-of-place product, nn.Conv3d): the
    same numbers up to float round-off (tests/test_nn.py), for study, for hooks that must see
    unmodified activations, or to time one against the other. The switch is per module instance:
    no global state.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    for block in module.modules():
        if hasattr(block, "fast_path"):
            block.fast_path = enabled
    return module
