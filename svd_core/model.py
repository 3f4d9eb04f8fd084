"""The whole SVD model: the three networks under one module, as `svd_core.load` returns it."""

from __future__ import annotations

from torch import nn

from .clip import ImageEncoder
from .config import SVDConfig
from .unet import UNet
from .vae import VAE


class SVDModel(nn.Module):
    """The spatio-temporal UNet, the VAE and the CLIP image encoder of one SVD configuration.

    Attributes: `config` (SVDConfig), `unet`, `vae`, `image_encoder`. Build on the meta device
    (`with torch.device("meta"): SVDModel(cfg)`) to inspect full-size shapes without memory.
    """

    def __init__(self, config: SVDConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(config.unet)
        self.vae = VAE(config.vae)
        self.image_encoder = ImageEncoder(config.image_encoder)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component and in total."""
        counts = {
            name: sum(p.numel() for p in getattr(self, name).parameters())
            for name in ("unet", "vae", "image_encoder")
        }
        counts["total"] = sum(counts.values())
        return counts
