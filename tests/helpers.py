"""Helpers shared by several test files: random weights, the official key list, reference tweaks.

Import them with `from helpers import ...` (pytest puts tests/ on sys.path, beside conftest.py).
Fixtures shared by several files live in conftest.py."""

from __future__ import annotations

from pathlib import Path

import torch

from svd_core import SVDConfig
from svd_core.model import SVDModel
from svd_core.parity import random_model as parity_random_model

# Every tensor of the official single-file checkpoints (name, shape, dtype) and the per-component
# counts, made from the official model definition (tests/data/README.md says how).
OFFICIAL_KEYS = Path(__file__).resolve().parent / "data" / "official_keys.json"


def random_model(seed: int = 0) -> SVDModel:
    """Tiny SVD with every parameter random, as `svd-core parity --model random:tiny` builds it
    (svd_core.parity.random_model: weights at 0.5 / sqrt(fan-in), norm scales near 1, everything
    else small; a flat 0.05 gives nearly constant grey frames, which would hide errors)."""
    return parity_random_model(SVDConfig.tiny(), seed)


def randomize(module: torch.nn.Module, seed: int = 0, mix_factor_std: float = 1.0) -> None:
    """Every parameter of `module` random, including the zero-initialised convs, norms and blend
    logits, at a scale that keeps activations of order one: weights (ndim >= 2) at 1 / sqrt(fan-in),
    blend logits (`mix_factor`) at `mix_factor_std`, every other 1-d parameter at 0.5."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                std = p[0].numel() ** -0.5  # 1 / sqrt(fan-in)
            elif name.endswith("mix_factor"):
                std = mix_factor_std
            else:
                std = 0.5
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def set_res_block_eps(unet: torch.nn.Module, eps: float) -> None:
    """Set the GroupNorm eps of every res block of a diffusers UNetSpatioTemporalConditionModel
    (diffusers builds some with 1e-6; the official UNet uses 1e-5 everywhere: DESIGN.md)."""
    from diffusers.models.resnet import SpatioTemporalResBlock

    for module in unet.modules():
        if isinstance(module, SpatioTemporalResBlock):
            for block in (module.spatial_res_block, module.temporal_res_block):
                block.norm1.eps = eps
                block.norm2.eps = eps
