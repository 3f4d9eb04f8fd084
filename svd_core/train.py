"""Training the tiny demo model from scratch: first the VAE, then the UNet (and image encoder), then export.

Two stages, each resumable, in one run folder RUN_DIR:

  RUN_DIR/vae/checkpoint.pt   the VAE stage's resumable state (model, EMA, optimizer, step, ...)
  RUN_DIR/vae/final.pt        the VAE's EMA weights and the SVDConfig with the measured scaling_factor
  RUN_DIR/unet/checkpoint.pt  the UNet stage's resumable state (UNet + image encoder, EMA, ...)
  RUN_DIR/unet/pool.pt        the cached latents of the clip pool the UNet stage trains on

VAE stage: reconstruction (L1 + MSE) of clips, random crops with the same window in every frame (the
temporal decoder must see clips), plus a small KL term on the posterior. At the end the std of the
latents over a few hundred held-out frames gives `scaling_factor` = 1 / std (the SD convention: the
diffusion then sees unit-variance latents).

UNet stage (the VAE frozen): EDM training (Karras et al. 2022) of SVD's v-prediction network. Per clip
one noise level, ln sigma ~ N(p_mean, p_std^2), shared by all its frames (as SVD); the denoiser is
`denoise_v_prediction` of svd_core.sampling, the preconditioning our sampler uses, so training and
sampling agree; loss (sigma^2 + 1) / sigma^2 * |D(x0 + sigma n) - x0|^2 (EDM weighting for
sigma_data = 1). Conditioning as at sampling time (svd_core.conditioning): the CLIP embedding of the
clean first frame, the unscaled VAE latent (posterior mode) of the first frame + cond_aug * noise, and
`embed_added(fps - 1, motion_bucket_id, cond_aug)`; with probability `cond_dropout` per clip the
embedding and the latent are both replaced by the unconditional branch's zeros, so classifier-free
guidance works.

Determinism and resuming: every random draw of step s comes from a generator seeded by (seed, s),
and step s trains on the samples s * batch_size ... (s + 1) * batch_size - 1 of a global sample
counter, so a resumed run repeats exactly what an uninterrupted one does (and sharding over ranks
later only has to offset the counter). Checkpoints are written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .clip import VisionBlock
from .conditioning import Conditioning, conditioned_network, encode_conditioning
from .config import SVDConfig
from .io import atomic_file
from .loading import save
from .model import SVDModel
from .nn import ResBlock
from .sampling import denoise_v_prediction
from .unet import SpatioTemporalResBlock, SpatioTemporalTransformer, UNet
from .vae import VAE, AttentionBlock

CHECKPOINT_NAME = "checkpoint.pt"
VAE_FINAL_NAME = "final.pt"
POOL_NAME = "pool.pt"
INITIAL_LOGVAR = (
    -8.0
)  # the VAE posterior's log-variance at the start of training (init_for_training)


class TrainingError(ValueError):
    """A run folder, checkpoint or setting that training cannot work with."""


# ---- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings shared by both stages."""

    steps: int = 1000  # optimizer steps of the stage
    batch_size: int = 8  # clips per step
    lr: float = 3e-4  # peak learning rate (after warm-up), decayed to lr_final_ratio * lr (cosine)
    warmup_steps: int = 50  # linear warm-up from 0
    lr_final_ratio: float = 0.1  # learning rate at the last step, relative to lr
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    weight_decay: float = 0.01  # AdamW (decoupled)
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0  # model initialization and every random draw of the training steps
    data_seed: int = 0  # MovingShapes seed (which clips exist)
    checkpoint_every: int = 100  # steps between checkpoints (and always at the last step)
    ema_decay: float = 0.999  # EMA of the weights (0 = off); the EMA weights are what gets exported

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.lr_final_ratio <= 1:
            raise TrainingError(
                f"need lr > 0, warmup_steps >= 0 and 0 <= lr_final_ratio <= 1, got lr={self.lr}, "
                f"warmup_steps={self.warmup_steps}, lr_final_ratio={self.lr_final_ratio}"
            )
        if not 0 <= self.ema_decay < 1:
            raise TrainingError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


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


# ---- small helpers -------------------------------------------------------------------------------


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of every random draw of one training step: a function of (seed, step) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def learning_rate(tc: TrainConfig, step: int) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to lr_final_ratio * lr at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(tc.steps - 1 - tc.warmup_steps, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return tc.lr * (tc.lr_final_ratio + (1 - tc.lr_final_ratio) * cosine)


class EMA:
    """Exponential moving average of a module's state, with the usual warm-up of the decay.

    After step s: ema = d * ema + (1 - d) * weights, d = min(decay, (1 + s) / (10 + s)), so early
    steps are not dominated by the random initialization. decay 0 keeps a copy of the weights.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Move the average towards the module's current state."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                self.state[name].lerp_(value, 1.0 - decay)
            else:
                self.state[name].copy_(value)


def train_step(
    trained: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    compute_loss: Callable[[], torch.Tensor],
    tc: TrainConfig,
    step: int,
) -> float:
    """One optimizer step on `compute_loss()`: lr schedule, backward, clipping, AdamW, EMA."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(tc, step)
    optimizer.zero_grad(set_to_none=True)
    loss = compute_loss()
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss is {loss.item()} at step {step}; lower --lr or check the data"
        )
    loss.backward()
    if tc.grad_clip > 0:
        params = [p for p in trained.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
    optimizer.step()
    ema.update(trained, step)
    return loss.item()


def make_optimizer(trained: nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that require gradients."""
    params = [p for p in trained.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)


@torch.no_grad()
def init_for_training(module: nn.Module) -> nn.Module:
    """Re-initialize a VAE or UNet (in place) so that training from scratch starts well; returns it.

    torch's default init shrinks the signal by about 1/sqrt(3) per layer, so after the dozen
    layers between an image and its reconstruction the output hardly depends on the input and
    training stalls. Instead: every conv and linear gets normal(0, 1/sqrt(fan_in)) weights and zero
    biases (variance preserving for a linear layer); the last layer of every residual branch (res
    block conv2, attention output, transformer proj_out) and the UNet's output conv start at zero,
    as in sgm's `zero_module` convention, so every residual block starts as the identity; and the
    video decoder's temporal output conv starts as the identity over frames (centre tap 1); and
    the VAE's posterior log-variance starts at INITIAL_LOGVAR.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Conv3d | nn.Linear):
            layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.weight[0].numel()))
            if layer.bias is not None:
                layer.bias.zero_()
    for layer in module.modules():
        if isinstance(layer, ResBlock):
            layer.conv2.weight.zero_()
        elif isinstance(layer, AttentionBlock):
            layer.attn.to_out.weight.zero_()
        elif isinstance(layer, SpatioTemporalTransformer):
            layer.proj_out.weight.zero_()
        elif isinstance(layer, UNet):
            layer.conv_out.weight.zero_()
        elif isinstance(layer, VAE):
            # The posterior starts nearly deterministic (std e^(INITIAL_LOGVAR / 2) = 0.02): with
            # zero log-variance the decoder would train on latents buried in unit noise and learn
            # to ignore the fine detail (the triangle) that a noisy latent cannot carry.
            layer.quant_conv.bias[layer.cfg.latent_channels :] = INITIAL_LOGVAR
            if layer.decoder.temporal_conv_out is not None:
                weight = layer.decoder.temporal_conv_out.weight  # (C, C, k, 1, 1)
                weight.zero_()
                weight[:, :, weight.shape[2] // 2, 0, 0] = torch.eye(weight.shape[0])
    return module


# ---- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` to `path` atomically: an interrupt leaves the previous file, never a part."""
    with atomic_file(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain data only)."""
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {str(path)!r}; run the stage that writes it first")
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_resumable(saved: dict, tc: TrainConfig) -> None:
    """A resumed run may change steps and checkpoint_every; anything else would change its history."""
    old, new = saved, dataclasses.asdict(tc)
    changed = [
        f"{k}: {old.get(k)!r} -> {v!r}"
        for k, v in new.items()
        if k not in ("steps", "checkpoint_every") and _plain(old.get(k)) != _plain(v)
    ]
    if changed:
        raise TrainingError(
            "resuming with other training settings than the checkpoint's: "
            + ", ".join(changed)
            + "; use the same settings or a new --out folder"
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def fit(
    stage_dir: Path,
    trained: nn.Module,
    batch_loss: Callable[[int, torch.Generator], torch.Tensor],
    tc: TrainConfig,
    extra: dict[str, Any],
    resume: bool,
    progress: bool = True,
    description: str = "train",
    fsdp_units: list[nn.Module] | None = None,
) -> dict[str, Any]:
    """The training loop of one stage: steps, progress bar, checkpoints, resume.

    `batch_loss(step, generator)` returns the loss of the step's batch. `extra` (configs) is stored
    in every checkpoint. Under torchrun `trained` is wrapped in DDP, or sharded with FSDP when
    `fsdp_units` lists its FSDP units (see distributed.fully_sharded); then the optimizer and the
    EMA hold this rank's shards (the EMA is elementwise, so averaging shards is averaging the full
    weights). Checkpoints hold full, unsharded tensors either way, so a run resumes at any world
    size, with or without FSDP. Returns {"ema": EMA, "losses": [...], "step_times": [...]} for the
    steps run here.
    """
    current = distributed.world()  # the batch is split by the stage's batch_loss
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / CHECKPOINT_NAME
    saved, start = None, 0
    if path.exists() and not resume:
        raise TrainingError(
            f"{str(path)!r} exists; pass --resume to continue that run or choose another --out"
        )
    if path.exists():
        saved = load_checkpoint(path)
        _check_resumable(saved["train_config"], tc)
        trained.load_state_dict(saved["model"])  # full tensors, before any sharding
        torch.set_rng_state(saved["torch_rng"])
        start = saved["step"]
    if fsdp_units is not None:
        forward = distributed.fully_sharded(trained, fsdp_units, current)
    else:
        forward = distributed.data_parallel(trained, current)
    # After sharding: under FSDP the optimizer and the EMA are over this rank's shards.
    optimizer = make_optimizer(trained, tc)
    ema = EMA(trained, tc.ema_decay)
    if saved is not None:
        ema.state = distributed.placed_like(saved["ema"], ema.state)
        optimizer.load_state_dict(distributed.optimizer_state_like(saved["optimizer"], optimizer))
    losses, step_times = [], []
    quiet = not progress or not current.is_main  # one bar, on rank 0
    bar = tqdm(
        range(start, tc.steps), desc=description, initial=start, total=tc.steps, disable=quiet
    )
    for step in bar:
        began = time.perf_counter()
        generator = step_generator(tc.seed, step)
        loss = train_step(
            trained,
            optimizer,
            ema,
            functools.partial(forward, batch_loss, step, generator),
            tc,
            step,
        )
        loss = distributed.mean_over_ranks(loss, current)  # the global batch's loss on every rank
        losses.append(loss)
        step_times.append(time.perf_counter() - began)
        bar.set_postfix(loss=f"{loss:.4f}", s_per_step=f"{step_times[-1]:.2f}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps:
            state = {  # full CPU tensors on rank 0 (gathered from the shards under FSDP)
                "model": distributed.full_state(trained.state_dict(), current),
                "ema": distributed.full_state(ema.state, current),
                "optimizer": distributed.full_state(optimizer.state_dict(), current),
                "step": step + 1,
                "samples_seen": (step + 1) * tc.batch_size,  # the global sample counter
                "torch_rng": torch.get_rng_state(),
                "train_config": dataclasses.asdict(tc),
                **extra,
            }
            if current.is_main:
                save_checkpoint(path, state)
            distributed.barrier(current)  # nobody reads or moves on before the file is complete
    return {"ema": ema, "losses": losses, "step_times": step_times}


# ---- data ----------------------------------------------------------------------------------------


def moving_shapes(cfg: SVDConfig, split: str, seed: int):
    """The MovingShapes dataset at the model's frame count and size."""
    from .data import MovingShapes

    if cfg.height != cfg.width:
        raise TrainingError(
            f"MovingShapes renders square clips; the config is {cfg.height}x{cfg.width}"
        )
    return MovingShapes(split=split, num_frames=cfg.num_frames, size=cfg.height, seed=seed)


def clips_batch(dataset, start: int, count: int) -> dict[str, torch.Tensor]:
    """The samples start, ..., start + count - 1 of the global counter, collated (B, F, 3, H, W)."""
    return type(dataset).collate([dataset[i % len(dataset)] for i in range(start, start + count)])


def random_window(frames: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """`length` consecutive frames of (B, F, C, H, W), a random window per clip; 0 = all frames."""
    num_frames = frames.shape[1]
    if length == 0 or length == num_frames:
        return frames
    if length > num_frames:
        raise TrainingError(f"clip_frames {length} is more than the clips' {num_frames} frames")
    starts = torch.randint(0, num_frames - length + 1, (frames.shape[0],), generator=generator)
    return torch.stack(
        [clip[s : s + length] for clip, s in zip(frames, starts.tolist(), strict=True)]
    )


def random_crop(frames: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A size x size window of (B, F, C, H, W), one random window per clip, the same in all its frames."""
    height, width = frames.shape[-2:]
    if size == 0 or (size == height and size == width):
        return frames
    if size > min(height, width):
        raise TrainingError(f"crop_size {size} is larger than the frames ({height}x{width})")
    tops = torch.randint(0, height - size + 1, (frames.shape[0],), generator=generator)
    lefts = torch.randint(0, width - size + 1, (frames.shape[0],), generator=generator)
    crops = [
        clip[..., top : top + size, left : left + size]
        for clip, top, left in zip(frames, tops.tolist(), lefts.tolist(), strict=True)
    ]
    return torch.stack(crops)


# ---- VAE stage -----------------------------------------------------------------------------------


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
        offset, total = part
        noise = torch.randn((total * num_frames, *posterior.mean.shape[1:]), generator=generator)
        noise = noise[offset * num_frames : (offset + batch) * num_frames].to(posterior.mean)
        z = posterior.mean + torch.exp(0.5 * posterior.logvar) * noise  # as posterior.sample
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


# ---- UNet stage ----------------------------------------------------------------------------------


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


# ---- export --------------------------------------------------------------------------------------


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
