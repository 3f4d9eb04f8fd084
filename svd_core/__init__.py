"""svd_core: a readable, exact and fast PyTorch reimplementation of Stable Video Diffusion."""

from .config import ConfigError, ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig
from .loading import CheckpointError, load, save
from .model import SVDModel
from .nn.embeddings import embed_added
from .pipeline import NumericalError, SVDPipeline, Video

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ImageEncoderConfig",
    "NumericalError",
    "SVDConfig",
    "SVDModel",
    "SVDPipeline",
    "UNetConfig",
    "VAEConfig",
    "Video",
    "__version__",
    "embed_added",
    "load",
    "save",
]
