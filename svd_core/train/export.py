"""Export: a run's EMA weights (the VAE stage's VAE, the UNet stage's UNet and image encoder) as one
official-layout .safetensors file that `svd_core.load` reads."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import SVDConfig
from ..loading import save
from ..model import SVDModel
from .loop import CHECKPOINT_NAME, load_checkpoint
from .vae_stage import VAE_FINAL_NAME


def export(run_dir: str | Path, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the run's EMA weights as one official-layout .safetensors file (config in its metadata).

    The VAE comes from RUN_DIR/vae/final.pt, the UNet and the image encoder from the latest UNet
    checkpoint. Load it back with `svd_core.load(path)`.
    """
    run_dir = Path(run_dir)
    final = load_checkpoint(run_dir / "vae" / VAE_FINAL_NAME)
    unet_state = load_checkpoint(run_dir / "unet" / CHECKPOINT_NAME)
    cfg = SVDConfig.from_dict(unet_state["svd_config"])
    model = SVDModel(cfg)
    state = {**unet_state["ema"], **{f"vae.{k}": v for k, v in final["vae"].items()}}
    model.load_state_dict(state, strict=True)
    return save(model, path, layout="official", dtype=dtype)
