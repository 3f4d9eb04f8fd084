"""Small blocks shared by the UNet, the VAE and the image encoder."""

from .attention import Attention
from .blend import AlphaBlend
from .embeddings import EmbeddingMLP, embed_added, timestep_embedding
from .feedforward import GEGLUFeedForward
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
]
