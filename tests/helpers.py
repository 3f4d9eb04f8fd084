"""Helpers shared by several test files: random weights, the official key list, reference tweaks,
and what the property tests of the public surface share (their settings and example counter, the
ramp image, the accepted sampling ranges, the network spy, a full disk, a spiked model).

Import them with `from helpers import ...` (pytest puts tests/ on sys.path, beside conftest.py).
Fixtures shared by several files live in conftest.py."""

from __future__ import annotations

import errno
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from PIL import Image

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


# ---- property tests: settings, the example counter, and what several files share --------------

SIZE = 64  # the tiny preset's video size; its multiple is 32 (VAE 8x, UNet 4x)
MULTIPLE = 32

# Deterministic property tests: the same examples on every run, no example database on disk,
# no per-example deadline on a shared 2-core machine.
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Examples run per property test; conftest's `example_count` prints a file's counts at its end
# (pytest -s).
EXAMPLES: Counter = Counter()


def ramp_image(height: int = SIZE, width: int = SIZE) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    return Image.fromarray(
        np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)
    )


class ReachedTheNetworks(Exception):
    """Raised by a spy in place of the first network call: validation was passed."""


RANGES = {  # the documented accepted ranges (svd_core.pipeline), restated
    "num_frames": (1, 1024),
    "num_steps": (1, 1000),
    "decode_chunk_size": (1, math.inf),
    "fps": (1, 240),
    "motion_bucket_id": (0, 1023),
    "cond_aug": (0, 10),
    "min_guidance": (0, 100),
    "max_guidance": (0, 100),
    "seed": (-(2**63), 2**64 - 1),
}


def accepted(name: str, value) -> bool:
    low, high = RANGES[name]
    if name in ("num_frames", "num_steps", "decode_chunk_size", "seed"):
        return type(value) is int and low <= value <= high
    return type(value) in (int, float) and math.isfinite(value) and low <= value <= high


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def spiked(name: str, factor: float, seed: int = 0) -> SVDModel:
    """The random tiny model with one res block's second conv scaled up by `factor`."""
    model = random_model(seed)
    with torch.no_grad():
        dict(model.named_parameters())[name + ".conv2.weight"].mul_(factor)
    return model


UNET_BLOCK = "unet.middle.res_in.spatial"
