"""svd_core: a readable, exact and fast PyTorch reimplementation of Stable Video Diffusion."""

from .config import ConfigError, ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig
from .nn.embeddings import embed_added

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ImageEncoderConfig",
    "SVDConfig",
    "UNetConfig",
    "VAEConfig",
    "__version__",
    "embed_added",
]
