"""The VAE stage: training SVD's VAE from scratch on clips, then measuring its `scaling_factor`.

Reconstruction (L1 + MSE) of clips, random crops with the same window in every frame (the temporal
decoder must see clips), plus a small KL term on the posterior. At the end the std of the latents
over a few hundred held-out frames gives `scaling_factor` = 1 / std (the SD convention: the
diffusion then sees unit-variance latents).

  RUN_DIR/vae/checkpoint.pt   the stage's resumable state (model, EMA, optimizer, step, ...)
  RUN_DIR/vae/final.pt        the VAE's EMA weights and the SVDConfig with the measured scaling_factor
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..config import SVDConfig
from ..vae import VAE, LatentPosterior
from .clips import clips_batch, moving_shapes, random_crop, random_window
from .initialization import init_for_training
from .loop import TrainConfig, TrainingError, fit, save_checkpoint

VAE_FINAL_NAME = "final.pt"


@dataclass(frozen=True)
class VAETrainConfig(TrainConfig):
    """The VAE stage: reconstruction + KL on random crops of clips."""

    steps: int = 1000  # 34 min at 2.1 s a step on 2 CPU cores shared with other work
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    ema_decay: float = 0.99
    # Square crop, the same window in every frame; 0 = whole frames. GroupNorm statistics of a
    # small crop differ from a whole frame's: 32x32 crops scored 2 dB worse on whole frames than
    # on crops, so the crops cover most of the 64x64 frame.
    crop_size: int = 48
    # Consecutive frames of each clip per step (a random window; 0 = all). The frames of one clip
    # differ only by the triangle's shift, so two per clip suffice to train the temporal layers
    # (kernel 3 over frames, zero padded) and the compute goes to more distinct clips instead.
    clip_frames: int = 2
    kl_weight: float = 1e-5  # weight of the mean per-element KL against N(0, 1) (kept small)
    # Reconstruction errors are weighted 1 + detail_weight * detail (see `detail_weights`); 0 =
    # plain means, the recipe of the shipped model. The shape covers ~3% of a frame: with plain
    # means the VAE learns the backgrounds and leaves the shape a faint smudge of the wrong colour
    # (held-out PSNR on the shape 10.4 dB); detail_weight 20 gave 17.5 dB there and 29.3 dB on
    # whole frames (24.9 with 0), but the UNet stage's 1500 steps then learnt less motion
    # (weights/README.md).
    detail_weight: float = 0.0
    scale_frames: int = 256  # held-out frames whose latent std gives scaling_factor

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_frames < 0:
            raise TrainingError(
                f"clip_frames must be >= 0 (0 = all frames), got {self.clip_frames}"
            )
        if (
            self.crop_size < 0
            or self.kl_weight < 0
            or self.detail_weight < 0
            or self.scale_frames < 2
        ):
            raise TrainingError(
                "need crop_size >= 0, kl_weight >= 0, detail_weight >= 0, scale_frames >= 2, got "
                f"{self.crop_size}, {self.kl_weight}, {self.detail_weight}, {self.scale_frames}"
            )


def detail_weights(frames: torch.Tensor, strength: float, window: int = 7) -> torch.Tensor:
    """Per-pixel loss weights (B, F, 1, H, W) for frames (B, F, 3, H, W): 1 + strength * detail.

    detail = the channel mean of |frame - its local mean over window x window pixels|: zero on flat
    or linearly graded regions, large on and around edges, so small shapes count in the loss as much
    as the background does. The weights depend on the target only (no gradient flows through them).
    """
    flat = frames.flatten(0, 1)  # (B*F, 3, H, W)
    local_mean = nn.functional.avg_pool2d(
        flat, window, stride=1, padding=window // 2, count_include_pad=False
    )
    detail = (flat - local_mean).abs().mean(dim=1, keepdim=True)  # (B*F, 1, H, W)
    return (1.0 + strength * detail).unflatten(0, frames.shape[:2])


def vae_loss(
    vae: VAE,
    frames: torch.Tensor,
    tc: VAETrainConfig,
    generator: torch.Generator,
    part: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE) of clips (B, F, 3, H, W) in [-1, 1] through a posterior sample, + KL.

    The reconstruction terms are means weighted by `detail_weights(frames, tc.detail_weight)`; the
    parts returned for logging are the plain (unweighted) means.

    `part` = (offset, global batch size) when `frames` is one rank's slice of a global batch: the
    posterior noise is drawn for the whole global batch and sliced (the same draws at any world
    size). Returns the loss and its parts. The KL is the mean per-element KL(q(z|x) || N(0, 1)).
    """
    batch, num_frames = frames.shape[:2]
    posterior = vae.encode_posterior(frames.flatten(0, 1))  # (B*F, 4, h, w) each
    if part is None:
        z = posterior.sample(generator)  # (B*F, 4, h, w)
    else:
        # Sample the global batch's posterior with this rank's rows in their place and zeros in
        # the other ranks' rows: the noise is the global batch's draw, the same at any world size.
        offset, total = part
        rows = slice(offset * num_frames, (offset + batch) * num_frames)
        padding = (0, 0, 0, 0, 0, 0, rows.start, total * num_frames - rows.stop)  # dim 0 only
        placed = LatentPosterior(
            *(nn.functional.pad(t, padding) for t in (posterior.mean, posterior.logvar))
        )
        z = placed.sample(generator)[rows]  # (B*F, 4, h, w)
    z = z.unflatten(0, (batch, num_frames))  # (B, F, 4, h, w)
    reconstruction = vae.decode(z)  # (B, F, 3, H, W)
    error = (reconstruction - frames).abs()
    l1, mse = error.mean(), error.square().mean()
    if tc.detail_weight > 0:
        weights = detail_weights(frames, tc.detail_weight)  # (B, F, 1, H, W)
        total_weight = weights.sum() * frames.shape[2]  # every channel of a pixel has its weight
        reconstruction_loss = (weights * (error + error.square())).sum() / total_weight
    else:
        reconstruction_loss = l1 + mse
    logvar = posterior.logvar
    kl = 0.5 * (posterior.mean.square() + logvar.exp() - 1.0 - logvar).mean()
    loss = reconstruction_loss + tc.kl_weight * kl
    return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


@torch.no_grad()
def measure_latent_std(vae: VAE, dataset, num_frames: int, batch_size: int = 8) -> float:
    """The std of the posterior-mode latents of the first `num_frames` frames of `dataset`'s clips."""
    latents, seen, index = [], 0, 0
    while seen < num_frames:
        frames = clips_batch(dataset, index, batch_size)["frames"].flatten(0, 1)  # (B*F, 3, H, W)
        frames = frames.to(next(vae.parameters()).device)
        latents.append(vae.encode(frames[: num_frames - seen]).flatten())
        seen += min(frames.shape[0], num_frames - seen)
        index += batch_size
    return torch.cat(latents).std().item()


def train_vae(
    run_dir: str | Path,
    cfg: SVDConfig,
    tc: VAETrainConfig,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the VAE of `cfg` on MovingShapes clips; write RUN_DIR/vae/{checkpoint,final}.pt.

    `device`: "cpu" or "cuda" (cuda:LOCAL_RANK under torchrun); the random draws are made on the
    CPU whatever the device, so a run does not depend on it beyond round-off. Returns
    {"scaling_factor", "losses", "step_times"}. final.pt holds the EMA weights and `cfg` with the
    measured scaling_factor; the UNet stage reads it.
    """
    stage_dir = Path(run_dir) / "vae"
    torch.manual_seed(tc.seed)
    trained = nn.ModuleDict({"vae": init_for_training(VAE(cfg.vae))})
    dataset = moving_shapes(cfg, "train", tc.data_seed)

    current, device = distributed.init_for_device(device)  # under torchrun: joins its group
    trained.to(device)
    offset, count = distributed.batch_slice(tc.batch_size, current)

    def batch_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        frames = clips_batch(dataset, step * tc.batch_size, tc.batch_size)["frames"]
        frames = random_window(frames, tc.clip_frames, generator)
        frames = random_crop(frames, tc.crop_size, generator).to(device)
        if not current.distributed:
            return vae_loss(trained["vae"], frames, tc, generator)[0]
        # Under torchrun every rank draws the crops of the whole global batch (cheap) and trains on
        # its slice, so each clip gets the same crop and noise at any world size.
        mine = frames[offset : offset + count]
        return vae_loss(trained["vae"], mine, tc, generator, (offset, tc.batch_size))[0]

    extra = {"svd_config": cfg.to_dict()}
    result = fit(stage_dir, trained, batch_loss, tc, extra, resume, progress, "vae")
    trained.load_state_dict(result["ema"].state)  # measure and export the EMA weights
    std = measure_latent_std(
        trained["vae"], moving_shapes(cfg, "heldout", tc.data_seed), tc.scale_frames
    )
    final_cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, scaling_factor=1.0 / std))
    final = {
        "svd_config": final_cfg.to_dict(),
        "vae": trained["vae"].state_dict(),
        "latent_std": std,
    }
    if current.is_main:
        save_checkpoint(stage_dir / VAE_FINAL_NAME, final)
    distributed.barrier(current)
    return {
        "scaling_factor": 1.0 / std,
        "losses": result["losses"],
        "step_times": result["step_times"],
    }
