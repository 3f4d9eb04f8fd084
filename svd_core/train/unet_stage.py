"""The UNet stage: EDM training of SVD's v-prediction UNet (and the image encoder), the VAE frozen.

Per clip one noise level, ln sigma ~ N(p_mean, p_std^2), shared by all its frames (as SVD); the
denoiser is `denoise_v_prediction` of svd_core.sampling, the preconditioning our sampler uses, so
training and sampling agree; loss (sigma^2 + 1) / sigma^2 * |D(x0 + sigma n) - x0|^2 (EDM weighting
for sigma_data = 1; Karras et al. 2022). Conditioning as at sampling time (svd_core.conditioning):
the CLIP embedding of the clean first frame, the unscaled VAE latent (posterior mode) of the first
frame + cond_aug * noise, and `embed_added(fps - 1, motion_bucket_id, cond_aug)`; with probability
`cond_dropout` per clip the embedding and the latent are both replaced by the unconditional
branch's zeros, so classifier-free guidance works. Under torchrun the UNet and the image encoder
are replicated (DDP) or sharded in the FSDP units of `unet_stage_fsdp_units`.

  RUN_DIR/unet/checkpoint.pt  the stage's resumable state (UNet + image encoder, EMA, ...)
  RUN_DIR/unet/pool.pt        the cached latents of the clip pool the stage trains on
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..clip import VisionBlock
from ..conditioning import Conditioning, conditioned_network, encode_conditioning
from ..config import SVDConfig
from ..model import SVDModel
from ..sampling import denoise_v_prediction
from ..unet import SpatioTemporalResBlock, SpatioTemporalTransformer
from ..vae import VAE
from .clips import clips_batch, moving_shapes
from .initialization import init_for_training
from .loop import TrainConfig, TrainingError, fit, load_checkpoint, save_checkpoint
from .vae_stage import VAE_FINAL_NAME

POOL_NAME = "pool.pt"


@dataclass(frozen=True)
class UNetTrainConfig(TrainConfig):
    """The UNet stage: EDM training of the v-prediction UNet with SVD's conditioning."""

    steps: int = 1500  # ~25 min at an estimated ~1 s a step on 2 idle CPU cores
    batch_size: int = 8
    warmup_steps: int = 100
    ema_decay: float = 0.995  # averages over about the last 200 steps
    # EDM's ln sigma ~ N(-1.2, 1.2) is for data of std 0.5; our scaled latents have std 1 (sigma_data
    # 1 in SVD's preconditioning), so the same relative noise is ln 2 higher; the wider spread reaches
    # the sampler's sigma_max 80 (ln 80 = 4.4) more often.
    p_mean: float = -0.5  # mean of ln sigma
    p_std: float = 1.6  # std of ln sigma
    # ln cond_aug ~ N(-3.0, 0.5): sgm publishes no SVD training config (only sampling configs), so we
    # follow the community SVD fine-tuning scripts (e.g. pixeli99/SVD_Xtend train_svd.py,
    # rand_log_normal(loc=-3.0, scale=0.5)); the sampling default 0.02 (ln = -3.9) is inside it.
    cond_aug_mean: float = -3.0  # mean of ln cond_aug
    cond_aug_std: float = 0.5  # std of ln cond_aug
    cond_dropout: float = 0.1  # per clip: zero image embedding and image latent together (for CFG)
    # The official model keeps its (pretrained) OpenCLIP encoder frozen; ours starts random, so for
    # the demo it is trained jointly or its embedding would carry little about the image.
    train_image_encoder: bool = True
    gradient_checkpointing: bool = False  # recompute UNet activations in backward (less memory)
    # Clips whose video latents are encoded once (a few minutes), then drawn without replacement
    # (a new order every pass); 1500 steps x 8 clips see each about 12 times, each time with new
    # noise, noise level and cond_aug.
    pool_size: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.cond_dropout <= 1:
            raise TrainingError(f"cond_dropout must be in [0, 1], got {self.cond_dropout}")
        if self.p_std <= 0 or self.cond_aug_std < 0 or self.pool_size < 1:
            raise TrainingError(
                f"need p_std > 0, cond_aug_std >= 0, pool_size >= 1, got {self.p_std}, "
                f"{self.cond_aug_std}, {self.pool_size}"
            )


@torch.no_grad()
def encode_pool(
    vae: VAE,
    dataset,
    pool_size: int,
    scaling_factor: float,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Encode the first pool_size clips once: scaled posterior-mode video latents and what conditions them.

    Returns latents (N, F, 4, h, w) * scaling_factor, first_frame (N, 3, H, W), fps (N,),
    motion_bucket_id (N,).
    """
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("latents", "first_frame", "fps", "motion_bucket_id")
    }
    for start in tqdm(
        range(0, pool_size, batch_size), desc="encoding clip pool", disable=not progress
    ):
        batch = clips_batch(dataset, start, min(batch_size, pool_size - start))
        frames = batch["frames"]  # (B, F, 3, H, W)
        encoded = vae.encode(frames.flatten(0, 1).to(next(vae.parameters()).device)).cpu()
        latents = encoded.unflatten(0, frames.shape[:2])
        parts["latents"].append(latents * scaling_factor)
        parts["first_frame"].append(frames[:, 0])
        parts["fps"].append(batch["fps"].float())
        parts["motion_bucket_id"].append(batch["motion_bucket_id"].float())
    return {k: torch.cat(v) for k, v in parts.items()}


def pool_indices(start: int, count: int, pool_size: int, seed: int) -> torch.Tensor:
    """Pool entries of the global samples start ... start + count - 1: a new permutation every epoch."""
    indices = []
    for sample in range(start, start + count):
        epoch, position = divmod(sample, pool_size)
        order = torch.randperm(
            pool_size, generator=torch.Generator().manual_seed(seed * 7919 + epoch)
        )
        indices.append(int(order[position]))
    return torch.tensor(indices)


def unet_loss(
    model: SVDModel,
    batch: dict[str, torch.Tensor],
    tc: UNetTrainConfig,
    generator: torch.Generator,
    part: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The EDM loss of SVD's v-prediction UNet on a batch of pool entries (see `encode_pool`).

    `part` = (offset, global batch size) when `batch` is one rank's slice of a larger global batch:
    the draws are made for the whole global batch and sliced, so each clip gets the same draws at
    any world size. Returns the loss and the step's draws (sigma, cond_aug, keep, noise,
    cond_noise), for inspection.
    """
    x0 = batch["latents"]  # (B, F, 4, h, w), scaled: unit variance
    first_frame = batch["first_frame"]  # (B, 3, H, W) in [-1, 1]
    clips = x0.shape[0]
    offset, total = part or (0, clips)
    mine = slice(offset, offset + clips)
    # One noise level per clip, shared by its frames (as SVD); and the conditioning augmentation.
    sigma = (tc.p_mean + tc.p_std * torch.randn(total, generator=generator)).exp()[mine]
    cond_aug = (tc.cond_aug_mean + tc.cond_aug_std * torch.randn(total, generator=generator)).exp()
    cond_aug = cond_aug[mine]
    keep = (torch.rand(total, generator=generator) >= tc.cond_dropout)[mine]  # False: uncond.
    noise = torch.randn((total, *x0.shape[1:]), generator=generator)[mine]
    cond_noise = torch.randn((total, *first_frame.shape[1:]), generator=generator)[mine]
    # Drawn on the CPU generator whatever the device, so a run does not depend on the device.
    sigma, cond_aug, keep, noise, cond_noise = (
        t.to(x0.device) for t in (sigma, cond_aug, keep, noise, cond_noise)
    )

    # The conditioning exactly as at sampling time, with gradients into the image encoder: CLIP
    # sees the clean frame, the frozen VAE the noisy one (mode, unscaled).
    cond = encode_conditioning(
        model,
        first_frame,
        cond_noise,
        fps_id=batch["fps"] - 1,
        motion_bucket_id=batch["motion_bucket_id"],
        cond_aug=cond_aug,
        clip_preprocess=model.image_encoder.preprocess,
        image_encoder_grad=True,
    )
    cond = drop_conditioning(cond, keep)

    noisy = x0 + sigma[:, None, None, None, None] * noise  # (B, F, 4, h, w)
    denoised = denoise_v_prediction(conditioned_network(model.unet, cond), noisy, sigma)
    weight = (sigma**2 + 1) / sigma**2  # EDM weighting for sigma_data = 1
    loss = (weight * (denoised - x0).square().mean(dim=(1, 2, 3, 4))).mean()
    draws = {
        "sigma": sigma,
        "cond_aug": cond_aug,
        "keep": keep,
        "noise": noise,
        "cond_noise": cond_noise,
    }
    return loss, draws


def drop_conditioning(cond: Conditioning, keep: torch.Tensor) -> Conditioning:
    """Per clip, `cond` where keep (B,) is True, else the unconditional branch of the sampler."""
    uncond = cond.unconditional()  # zero image embedding and zero image latent, same vector
    return Conditioning(
        torch.where(keep[:, None, None], cond.context, uncond.context),
        torch.where(keep[:, None, None, None], cond.image_latent, uncond.image_latent),
        cond.vector,
    )


def unet_stage_model(run_dir: str | Path, tc: UNetTrainConfig) -> SVDModel:
    """A fresh SVDModel (seeded) with the VAE stage's frozen EMA VAE and its measured scaling_factor."""
    final = load_checkpoint(Path(run_dir) / "vae" / VAE_FINAL_NAME)
    cfg = SVDConfig.from_dict(final["svd_config"])
    torch.manual_seed(tc.seed)
    model = SVDModel(cfg)
    init_for_training(model.unet)  # the image encoder keeps its init: pre-norm, shallow
    model.vae.load_state_dict(final["vae"])
    model.vae.requires_grad_(False)
    model.image_encoder.requires_grad_(tc.train_image_encoder)
    model.unet.gradient_checkpointing = tc.gradient_checkpointing
    return model


def _pool(
    run_dir: Path, model: SVDModel, tc: UNetTrainConfig, progress: bool
) -> dict[str, torch.Tensor]:
    """The clip pool's latents, read from RUN_DIR/unet/pool.pt when it was made by this VAE and setting."""
    vae = model.vae
    key = {
        "pool_size": tc.pool_size,
        "data_seed": tc.data_seed,
        "vae_fingerprint": sum(p.cpu().double().abs().sum().item() for p in vae.parameters()),
        "scaling_factor": model.config.vae.scaling_factor,
    }
    path = run_dir / "unet" / POOL_NAME
    if path.is_file():
        cached = load_checkpoint(path)
        if cached["key"] == key:
            return cached["pool"]
    dataset = moving_shapes(model.config, "train", tc.data_seed)
    pool = encode_pool(
        vae, dataset, tc.pool_size, model.config.vae.scaling_factor, progress=progress
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"key": key, "pool": pool})
    return pool


def unet_stage_fsdp_units(model: SVDModel) -> list[nn.Module]:
    """The FSDP units of the UNet stage, innermost first (see distributed.fully_sharded).

    One unit per res block and per transformer of the UNet (a spatial/temporal pair with its
    blend: the largest, at svd_xt's size, holds 100 M parameters of the UNet's 1.5 B), one per
    ViT block of the image encoder; then each network, whose unit holds the rest (embeddings,
    conv_in/conv_out, down/upsampling convs, the ViT's patch embedding and projection).
    """
    blocks = (SpatioTemporalResBlock, SpatioTemporalTransformer)
    unet_blocks = [m for m in model.unet.modules() if isinstance(m, blocks)]
    vit_blocks = [m for m in model.image_encoder.modules() if isinstance(m, VisionBlock)]
    return [*unet_blocks, model.unet, *vit_blocks, model.image_encoder]


def train_unet(
    run_dir: str | Path,
    tc: UNetTrainConfig,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
    fsdp: bool = False,
) -> dict[str, Any]:
    """Train the UNet (and the image encoder) against the VAE in RUN_DIR/vae; write RUN_DIR/unet/.

    `device`: "cpu" or "cuda" (cuda:LOCAL_RANK under torchrun); the draws are made on the CPU
    whatever the device. `fsdp`: under torchrun, shard the UNet and the image encoder with FSDP
    (`unet_stage_fsdp_units`) instead of replicating them with DDP; the same steps up to float
    round-off, the same checkpoints. One process has nothing to shard and trains unwrapped.
    Returns {"losses", "step_times"}.
    """
    run_dir = Path(run_dir)
    current, device = distributed.init_for_device(device)  # under torchrun: joins its group
    model = unet_stage_model(run_dir, tc).to(device)
    if not current.is_main:  # rank 0 encodes and writes the pool, the others read it
        distributed.barrier(current)
    pool = _pool(run_dir, model, tc, progress and current.is_main)
    if current.is_main:
        distributed.barrier(current)
    pool = {k: v.to(device) for k, v in pool.items()}
    trained = nn.ModuleDict({"unet": model.unet, "image_encoder": model.image_encoder})

    offset, count = distributed.batch_slice(tc.batch_size, current)

    def batch_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        # This rank's slice of the step's global batch (all of it without torchrun).
        start = step * tc.batch_size + offset
        rows = pool_indices(start, count, tc.pool_size, tc.seed)
        part = (offset, tc.batch_size)
        return unet_loss(model, {k: v[rows] for k, v in pool.items()}, tc, generator, part)[0]

    extra = {"svd_config": model.config.to_dict()}
    units = unet_stage_fsdp_units(model) if fsdp else None
    result = fit(run_dir / "unet", trained, batch_loss, tc, extra, resume, progress, "unet", units)
    return {"losses": result["losses"], "step_times": result["step_times"]}
