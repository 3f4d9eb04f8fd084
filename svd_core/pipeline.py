"""Image to video: conditioning, EDM sampling with per-frame guidance, chunked decoding.

    pipe = SVDPipeline(svd_core.load("svd_xt.safetensors"))
    video = pipe("photo.png", seed=42)
    video.save("clip.mp4")

Random numbers: with an integer seed, image i of a batch uses a CPU generator seeded with seed + i
and draws, in the official script's order, first the conditioning noise (randn_like(image)), then
the initial latent noise (F, 4, h, w). So the same seed gives the same noise as the official
`simple_video_sample.py`, and a batch equals the single runs with seeds seed, seed + 1, ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import sampling
from .conditioning import encode_conditioning, guided_denoiser
from .io import fit_image, load_image, save_video, to_uint8

GUIDANCE_SCHEDULES = ("linear", "constant", "triangle")
NUMERICS = ("official", "diffusers")


class NumericalError(RuntimeError):
    """Sampling produced NaN or infinite values."""


@dataclass
class Video:
    """One generated clip.

    frames: uint8 (F, H, W, 3); fps: playback rate; float_frames: (F, 3, H, W) in [0, 1] before
    quantization; latents: the final (F, C, h, w) latents, scaled as the diffusion sees them.
    """

    frames: np.ndarray
    fps: float
    float_frames: torch.Tensor
    latents: torch.Tensor

    def save(self, path: str | os.PathLike) -> Path:
        """Write to .mp4, .gif, .webp, or a folder of PNGs (no suffix), atomically."""
        return save_video(self.frames, path, self.fps)

    def __len__(self) -> int:
        return self.frames.shape[0]


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _finite(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


class SVDPipeline:
    """Stable Video Diffusion, image to video, with a model from `svd_core.load`.

    dtype: None keeps the model as loaded; torch.float16 or torch.bfloat16 casts the UNet and the
    image encoder to it and keeps the VAE in float32 (a half-precision VAE decoder overflows into
    black frames; both references upcast it too). Group norms and attention softmax run in float32
    inside the networks either way.
    """

    def __init__(self, model, dtype: torch.dtype | None = None) -> None:
        if dtype is not None:
            if dtype not in (torch.float32, torch.float16, torch.bfloat16):
                raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
            model.unet.to(dtype)
            model.image_encoder.to(dtype)
            model.vae.to(torch.float32)
        self.model = model
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.unet.parameters()).device

    @torch.no_grad()
    def __call__(
        self,
        image,
        num_frames: int | None = None,
        num_steps: int | None = None,
        fps: float | None = None,
        motion_bucket_id: float | None = None,
        cond_aug: float | None = None,
        min_guidance: float | None = None,
        max_guidance: float | None = None,
        seed: int | Sequence[int] | torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        decode_chunk_size: int | None = None,
        height: int | None = None,
        width: int | None = None,
        resize: str = "crop",
        sampler: str = "euler",
        guidance: str = "linear",
        batch_guidance: bool = True,
        numerics: str = "official",
        progress: bool = True,
        callback=None,
    ) -> Video | list[Video]:
        """Generate a video from `image`.

        image: a path, PIL image, numpy array (uint8, or float in [0, 1]), or tensor (3, H, W) /
        (B, 3, H, W) in [-1, 1]; or a list of those for a batch. One image gives a `Video`, a list
        or a batch tensor a list of them. Every other argument defaults to the model's preset
        (`model.config`): frames, steps, fps 7 (conditioned as fps_id = fps - 1, the sgm convention),
        motion bucket 127, cond_aug 0.02, guidance min -> max over the frames, decode chunk, size.

        seed: int (image i uses seed + i), a list of ints (one per image), a CPU torch.Generator
        (draws in sequence), or None (random). noise: initial unit-variance latent noise
        (B, F, C, h, w), used instead of the seeded draw (then scaled by sqrt(1 + sigma_max^2)).
        resize: "crop" (cover and center-crop), "squash", or "none" (image must have the size).
        sampler: "euler" (official), "heun" or "dpmpp_2m". guidance: "linear" (official),
        "constant" (max_guidance everywhere) or "triangle". batch_guidance=False runs the two
        guidance branches one after the other (half the activation memory, same result).
        numerics="diffusers" reproduces diffusers' choices (CLIP preprocessing, float64 schedule,
        guidance on the network output, rounding to uint8) to compare with its pipeline.
        callback: called after each step with {"step", "sigma", "x", "denoised"}.
        """
        cfg = self.config
        num_frames = _positive_int(
            "num_frames", cfg.num_frames if num_frames is None else num_frames
        )
        num_steps = _positive_int("num_steps", cfg.num_steps if num_steps is None else num_steps)
        decode_chunk_size = _positive_int(
            "decode_chunk_size",
            cfg.decode_chunk_size if decode_chunk_size is None else decode_chunk_size,
        )
        fps = _finite("fps", cfg.fps if fps is None else fps)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        motion_bucket_id = _finite(
            "motion_bucket_id",
            cfg.motion_bucket_id if motion_bucket_id is None else motion_bucket_id,
        )
        cond_aug = _finite("cond_aug", cfg.cond_aug if cond_aug is None else cond_aug)
        if cond_aug < 0:
            raise ValueError(f"cond_aug must be >= 0, got {cond_aug}")
        min_guidance = _finite(
            "min_guidance", cfg.min_guidance if min_guidance is None else min_guidance
        )
        max_guidance = _finite(
            "max_guidance", cfg.max_guidance if max_guidance is None else max_guidance
        )
        height = cfg.height if height is None else height
        width = cfg.width if width is None else width
        if sampler not in sampling.SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(sampling.SAMPLERS)}, got {sampler!r}")
        if guidance not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance must be one of {GUIDANCE_SCHEDULES}, got {guidance!r}")
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
        factor = cfg.vae.downscale_factor

        single = not isinstance(image, (list, tuple)) and not (
            isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] > 1
        )
        images = [
            load_image(item) for item in (image if isinstance(image, (list, tuple)) else [image])
        ]
        if not images:
            raise ValueError("no images given")
        images = torch.cat([fit_image(item, height, width, resize) for item in images])
        batch = images.shape[0]
        latent_shape = (num_frames, cfg.vae.latent_channels, height // factor, width // factor)

        cond_noise, latent_noise = self._draw_noise(seed, images, latent_shape)
        if noise is not None:
            expected = (batch, *latent_shape)
            if tuple(noise.shape) != expected:
                raise ValueError(
                    f"noise must have shape {expected} (B, F, C, h, w), got {tuple(noise.shape)}"
                )
            latent_noise = noise.float().cpu()

        device = self.device
        cond = encode_conditioning(
            self.model,
            images.to(device),
            cond_noise.to(device),
            fps_id=fps - 1,
            motion_bucket_id=motion_bucket_id,
            cond_aug=cond_aug,
            clip_preprocess=numerics,
        )
        scale = self._guidance(guidance, min_guidance, max_guidance, num_frames).to(device)
        denoiser = guided_denoiser(
            self.model.unet,
            cond,
            scale,
            batched=batch_guidance,
            guide="denoised" if numerics == "official" else "output",
        )
        sigmas = sampling.karras_sigmas(
            num_steps, cfg.sigma_min, cfg.sigma_max, numerics=numerics
        ).to(device)
        x = latent_noise.to(device) * torch.sqrt(1.0 + sigmas[0] ** 2)

        def check_and_report(info: dict) -> None:
            if not torch.isfinite(info["denoised"]).all():
                raise NumericalError(
                    f"sampling produced NaN/inf at step {info['step']} (sigma {info['sigma']:.4g}) in "
                    f"{next(self.model.unet.parameters()).dtype}; run the UNet in float32 or bfloat16 "
                    "(SVDPipeline(model, dtype=torch.float32)) instead of float16"
                )
            if callback is not None:
                callback(info)

        latents = sampling.SAMPLERS[sampler](
            denoiser, x, sigmas, callback=check_and_report, progress=progress
        )
        vae_dtype = next(self.model.vae.parameters()).dtype
        decoded = self.model.vae.decode(
            (latents / cfg.vae.scaling_factor).to(vae_dtype), chunk_size=decode_chunk_size
        )
        float_frames = ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()  # (B, F, 3, H, W)
        videos = []
        for index in range(batch):
            frames = to_uint8(float_frames[index], rounding=numerics == "diffusers")
            videos.append(Video(frames, fps, float_frames[index], latents[index].float().cpu()))
        return videos[0] if single else videos

    @staticmethod
    def _guidance(kind: str, low: float, high: float, num_frames: int) -> torch.Tensor:
        if kind == "linear":
            return sampling.linear_guidance(low, high, num_frames)
        if kind == "constant":
            return sampling.constant_guidance(high, num_frames)
        return sampling.triangle_guidance(low, high, num_frames)

    @staticmethod
    def _draw_noise(
        seed, images: torch.Tensor, latent_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning noise (B, 3, H, W) and latent noise (B, F, C, h, w), in the official order."""
        batch = images.shape[0]
        if isinstance(seed, torch.Generator):
            generators = [seed] * batch
        elif seed is None:
            generators = [
                torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
            ] * batch
        else:
            seeds = (
                [seed + i for i in range(batch)]
                if isinstance(seed, (int, np.integer))
                else list(seed)
            )
            if len(seeds) != batch or not all(isinstance(s, (int, np.integer)) for s in seeds):
                raise ValueError(f"seed must be an int or a list of {batch} ints, got {seed!r}")
            generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        cond_noise, latent_noise = [], []
        for index, generator in enumerate(generators):
            cond_noise.append(torch.randn(images[index : index + 1].shape, generator=generator))
            latent_noise.append(torch.randn(latent_shape, generator=generator))
        return torch.cat(cond_noise), torch.stack(latent_noise)
