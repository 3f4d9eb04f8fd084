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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__, sampling
from .conditioning import encode_conditioning, guided_denoiser
from .io import check_video_size, fit_image, load_image, save_video, to_uint8

GUIDANCE_SCHEDULES = ("linear", "constant", "triangle")
NUMERICS = ("official", "diffusers")

# The accepted range of every sampling argument: outside it a run means nothing to the model or
# cannot finish; inside it, values the model was not trained on give a warning (as the official
# script prints one) but run. Errors name the value and the range, before any network runs.
MAX_FRAMES = 1024  # the UNet sees all frames at once; SVD was trained on 14 (svd) and 25 (svd_xt)
MAX_STEPS = 1000  # EDM samplers need 25-50 steps; more only takes longer
FPS_RANGE = (1.0, 240.0)  # fps_id = fps - 1 must be >= 0; 240 is the fastest common frame rate
MOTION_BUCKET_RANGE = (0.0, 1023.0)  # bucket ids are >= 0; the official script warns above 255
COND_AUG_RANGE = (0.0, 10.0)  # noise std on an image in [-1, 1]: at 10 nothing of the image is left
GUIDANCE_RANGE = (0.0, 100.0)  # 0 = unconditional; the official scales are 1 to 3
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
# The official script warns ("may lead to suboptimal performance") for fps_id outside 5..30
# (fps 6 to 31) and motion_bucket_id above 255; so do we.
WARN_FPS_ID = (5, 30)
WARN_MOTION_BUCKET = 255


class NumericalError(RuntimeError):
    """Sampling produced NaN or infinite values.

    The message names the network, the step and the dtype, and says what to do. In float16 the
    usual cause is an activation above float16's largest value, 65504: run the UNet in bfloat16
    (same memory, float32's range) or float32, and keep the VAE in float32, as SVDPipeline(model,
    dtype=...) does (a model loaded in float16 and passed without a dtype runs its VAE in float16).
    """


def _check_finite(tensor: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    """Raise NumericalError, with the remedy for `dtype`, if `tensor` holds NaN or inf."""
    if torch.isfinite(tensor).all():
        return
    if dtype == torch.float16 and "VAE" in what:
        remedy = (
            "float16 overflows above 65504: keep the VAE in float32, as "
            "SVDPipeline(model, dtype=torch.float16) does"
        )
    elif dtype == torch.float16:
        remedy = (
            "float16 overflows above 65504: use bfloat16 (same memory, float32's range) or "
            "float32 (SVDPipeline(model, dtype=torch.bfloat16); svd-core generate --dtype bfloat16)"
        )
    else:
        remedy = (
            "the weights or the conditioning produce them: check the checkpoint (svd-core info), "
            "and try the default fps, motion_bucket_id, cond_aug and guidance"
        )
    name = str(dtype).removeprefix("torch.")
    raise NumericalError(f"NaN/inf in {what}, computed in {name}; {remedy}")


@dataclass
class Video:
    """One generated clip.

    frames: uint8 (F, H, W, 3); fps: playback rate; float_frames: (F, 3, H, W) in [0, 1] before
    quantization; latents: the final (F, C, h, w) latents, scaled as the diffusion sees them.
    seed: the seed its noise was drawn with (None when a torch.Generator or `noise` was given), so
    `pipe(image, seed=video.seed, ...)` makes it again; metadata: the seed and every setting the
    run resolved (frames, steps, fps, guidance, size, sampler, ...), which `save` stores in the file.
    """

    frames: np.ndarray
    fps: float
    float_frames: torch.Tensor
    latents: torch.Tensor
    seed: int | None = None
    metadata: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to .mp4, .gif, .webp, or a folder of PNGs, atomically, with `metadata` inside
        (`svd_core.io.read_metadata` reads it back)."""
        return save_video(self.frames, path, self.fps, self.metadata)

    def __len__(self) -> int:
        return self.frames.shape[0]


def random_seed() -> int:
    """A fresh seed for a run that was given none: drawn from torch's global generator (so
    `torch.manual_seed` makes even unseeded runs repeat), small enough that seed + i of a batch
    stays in range."""
    return int(torch.randint(0, 2**62, ()).item())


def _int_in(name: str, value, low: int, high: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not low <= value <= high
    ):
        if low == 1:
            raise ValueError(
                f"{name} must be a positive integer, got {value!r} (accepted: 1 to {high})"
            )
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _number_in(name: str, value, low: float, high: float, rule: str | None = None) -> float:
    accepted = f"(accepted: {low:g} to {high:g})"
    if isinstance(value, (bool, str, bytes)):  # float() takes True and "7"; neither is meant here
        raise ValueError(f"{name} must be a number, got {value!r} {accepted}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r} {accepted}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r} {accepted}")
    if not low <= number <= high:
        rule = rule or f">= {low:g} and <= {high:g}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return number


def check_options(
    num_frames: int | None = None,
    num_steps: int | None = None,
    decode_chunk_size: int | None = None,
    fps: float | None = None,
    motion_bucket_id: float | None = None,
    cond_aug: float | None = None,
    min_guidance: float | None = None,
    max_guidance: float | None = None,
    seed=None,
) -> dict:
    """Check the sampling arguments that are given (not None) against their ranges.

    Returns them as ints and floats, keyed by name. Raises ValueError naming the argument, the
    value given and the range accepted (the constants above). It needs no model, so the command
    line calls it before loading one; SVDPipeline calls it with the preset's defaults filled in.
    """
    checked: dict = {}
    if num_frames is not None:
        checked["num_frames"] = _int_in("num_frames", num_frames, 1, MAX_FRAMES)
    if num_steps is not None:
        checked["num_steps"] = _int_in("num_steps", num_steps, 1, MAX_STEPS)
    if decode_chunk_size is not None:
        checked["decode_chunk_size"] = _positive_int("decode_chunk_size", decode_chunk_size)
    if fps is not None:
        checked["fps"] = _number_in(
            "fps",
            fps,
            *FPS_RANGE,
            f"positive, from {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g} (the model is conditioned on "
            "fps_id = fps - 1, which must be >= 0)",
        )
    if motion_bucket_id is not None:
        checked["motion_bucket_id"] = _number_in(
            "motion_bucket_id", motion_bucket_id, *MOTION_BUCKET_RANGE
        )
    if cond_aug is not None:
        checked["cond_aug"] = _number_in("cond_aug", cond_aug, *COND_AUG_RANGE)
    for name, value in (("min_guidance", min_guidance), ("max_guidance", max_guidance)):
        if value is not None:
            checked[name] = _number_in(name, value, *GUIDANCE_RANGE)
    if seed is not None and not isinstance(seed, torch.Generator):
        seeds = [seed] if isinstance(seed, (int, np.integer)) else seed
        if isinstance(seed, (str, bytes)) or not isinstance(seeds, Sequence):
            raise ValueError(
                f"seed must be an int, a list of ints or a torch.Generator, got {seed!r}"
            )
        for value in seeds:
            _int_in("seed", value, *SEED_RANGE)
        checked["seed"] = seed
    return checked


def _warn_outside_official(fps: float, motion_bucket_id: float) -> None:
    """Warn where the official sampling script warns: fps_id outside 5..30, motion bucket > 255."""
    low, high = WARN_FPS_ID
    if not low <= fps - 1 <= high:
        warnings.warn(
            f"fps {fps:g} conditions on fps_id {fps - 1:g}, outside {low}..{high} (fps {low + 1} "
            f"to {high + 1}), where the official script warns of suboptimal results",
            stacklevel=3,
        )
    if motion_bucket_id > WARN_MOTION_BUCKET:
        warnings.warn(
            f"motion_bucket_id {motion_bucket_id:g} is above {WARN_MOTION_BUCKET}, where the "
            "official script warns of suboptimal results",
            stacklevel=3,
        )


class SVDPipeline:
    """Stable Video Diffusion, image to video, with a model from `svd_core.load`.

    dtype: None keeps the model as loaded; torch.float16 or torch.bfloat16 casts the UNet and the
    image encoder to it and keeps the VAE in float32 (a half-precision VAE decoder overflows into
    black frames; both references upcast it too). Inside the UNet the group norms compute in
    float32 (GroupNorm32); every other layer of the UNet and the image encoder runs in `dtype`.

    Numerical hazards: the image encoder's embedding, the VAE's latent, every denoised prediction
    and the decoded frames are checked; NaN or inf stops the run with NumericalError naming the
    network, the step and the dtype. In float16 an activation above 65504 becomes inf: the remedy
    the error gives is bfloat16 (float32's range in half the memory) or float32.
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
        """Where the model computes (for a low-memory model: where its parts are read to)."""
        if self.model.low_memory:
            return self.model.lazy_weights.device
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
        batch_guidance: bool | None = None,
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
        (draws in sequence), or None (a `random_seed()`, recorded in each Video's `seed`). noise: initial unit-variance latent noise
        (B, F, C, h, w), used instead of the seeded draw (then scaled by sqrt(1 + sigma_max^2)).
        resize: "crop" (the largest centered box of the video's aspect ratio, scaled to the size),
        "squash", or "none" (the image must have the size). height and width: multiples of
        `self.size_multiple` (64 for SVD), at most 4096.
        sampler: "euler" (official), "heun" or "dpmpp_2m". guidance: "linear" (official),
        "constant" (max_guidance everywhere) or "triangle". batch_guidance=False runs the two
        guidance branches one after the other (half the UNet's activation memory, the same result
        up to float32 round-off); None (default): batched, except for a low-memory model.
        A low-memory model (`svd_core.load(..., low_memory=True)`) holds one network at a time:
        image encoder, VAE encoder, UNet, VAE decoder, each read from the checkpoint just before
        it runs and freed after (the same result, bit for bit, as a plain model with the same
        batch_guidance).
        numerics="diffusers" reproduces diffusers' choices (CLIP preprocessing, float64 schedule,
        guidance on the network output, rounding to uint8) to compare with its pipeline.
        callback: called after each step with {"step", "sigma", "x", "denoised"}.

        Every argument is checked before any network runs; a value out of its range (the
        constants at the top of this module, `check_options`) raises ValueError naming the value
        and the range. fps outside 6..31 and motion_bucket_id above 255 run with a warning, as in
        the official script. NaN or inf anywhere stops the run with NumericalError.
        """
        cfg = self.config
        options = check_options(
            num_frames=cfg.num_frames if num_frames is None else num_frames,
            num_steps=cfg.num_steps if num_steps is None else num_steps,
            decode_chunk_size=cfg.decode_chunk_size
            if decode_chunk_size is None
            else decode_chunk_size,
            fps=cfg.fps if fps is None else fps,
            motion_bucket_id=cfg.motion_bucket_id if motion_bucket_id is None else motion_bucket_id,
            cond_aug=cfg.cond_aug if cond_aug is None else cond_aug,
            min_guidance=cfg.min_guidance if min_guidance is None else min_guidance,
            max_guidance=cfg.max_guidance if max_guidance is None else max_guidance,
            seed=seed,
        )
        num_frames, num_steps = options["num_frames"], options["num_steps"]
        decode_chunk_size, fps = options["decode_chunk_size"], options["fps"]
        motion_bucket_id, cond_aug = options["motion_bucket_id"], options["cond_aug"]
        min_guidance, max_guidance = options["min_guidance"], options["max_guidance"]
        height = cfg.height if height is None else height
        width = cfg.width if width is None else width
        factor, multiple = cfg.vae.downscale_factor, self.size_multiple
        unet_factor = multiple // factor
        check_video_size(
            height,
            width,
            multiple,
            f" (this model's VAE downsamples {factor}x, then its UNet {unet_factor}x)",
        )
        if sampler not in sampling.SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(sampling.SAMPLERS)}, got {sampler!r}")
        if guidance not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance must be one of {GUIDANCE_SCHEDULES}, got {guidance!r}")
        if batch_guidance is None:
            batch_guidance = not self.model.low_memory
        elif not isinstance(batch_guidance, bool):
            raise ValueError(f"batch_guidance must be True, False or None, got {batch_guidance!r}")
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
        if noise is not None:
            if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
                kind = noise.dtype if isinstance(noise, torch.Tensor) else type(noise).__name__
                raise ValueError(f"noise must be a float tensor (B, F, C, h, w), got {kind}")
            if not torch.isfinite(noise).all():
                raise ValueError("noise contains NaN or infinite values")
        _warn_outside_official(fps, motion_bucket_id)

        single = not isinstance(image, (list, tuple)) and not (
            isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] > 1
        )
        images = [
            load_image(item) for item in (image if isinstance(image, (list, tuple)) else [image])
        ]
        if not images:
            raise ValueError("no images given")
        images = torch.cat([fit_image(item, height, width, resize, multiple) for item in images])
        batch = images.shape[0]
        latent_shape = (num_frames, cfg.vae.latent_channels, height // factor, width // factor)

        if seed is None:
            seed = random_seed()
        seeds, cond_noise, latent_noise = self._draw_noise(seed, images, latent_shape)
        if noise is not None:
            expected = (batch, *latent_shape)
            if tuple(noise.shape) != expected:
                raise ValueError(
                    f"noise must have shape {expected} (B, F, C, h, w), got {tuple(noise.shape)}"
                )
            latent_noise = noise.float().cpu()
            seeds = [None] * batch
        settings = {
            "svd_core": __version__,
            "model": cfg.name,
            "num_frames": num_frames,
            "num_steps": num_steps,
            "fps": fps,
            "motion_bucket_id": motion_bucket_id,
            "cond_aug": cond_aug,
            "min_guidance": min_guidance,
            "max_guidance": max_guidance,
            "guidance": guidance,
            "sampler": sampler,
            "height": height,
            "width": width,
            "resize": resize,
            "numerics": numerics,
        }

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
        encoder_dtype = next(self.model.image_encoder.parameters()).dtype
        vae_dtype = next(self.model.vae.parameters()).dtype
        _check_finite(cond.context, "the image encoder's embedding of the image", encoder_dtype)
        _check_finite(cond.image_latent, "the VAE encoder's latent of the image", vae_dtype)
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

        unet_dtype = next(self.model.unet.parameters()).dtype

        def check_and_report(info: dict) -> None:
            step = f"step {info['step']} (sigma {info['sigma']:.4g}) of sampling"
            _check_finite(info["denoised"], f"the UNet's denoised latent at {step}", unet_dtype)
            if callback is not None:
                callback(info)

        with self.model.resident("unet"):  # a low-memory model reads the UNet now, frees it after
            latents = sampling.SAMPLERS[sampler](
                denoiser, x, sigmas, callback=check_and_report, progress=progress
            )
        with self.model.resident("vae_decoder"):
            decoded = self.model.vae.decode(
                (latents / cfg.vae.scaling_factor).to(vae_dtype), chunk_size=decode_chunk_size
            )
        _check_finite(decoded, "the VAE decoder's frames", vae_dtype)
        float_frames = ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()  # (B, F, 3, H, W)
        videos = []
        for index in range(batch):
            frames = to_uint8(float_frames[index], rounding=numerics == "diffusers")
            metadata = {**settings, "seed": seeds[index]}
            videos.append(
                Video(
                    frames,
                    fps,
                    float_frames[index],
                    latents[index].float().cpu(),
                    seed=seeds[index],
                    metadata=metadata,
                )
            )
        return videos[0] if single else videos

    @property
    def size_multiple(self) -> int:
        """Video height and width must be multiples of this: the VAE's times the UNet's downsampling
        (64 for SVD; 32 for the tiny presets, whose UNet has 3 levels)."""
        return self.config.size_multiple

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
    ) -> tuple[list[int | None], torch.Tensor, torch.Tensor]:
        """Each image's seed (None for a Generator), conditioning noise (B, 3, H, W) and latent
        noise (B, F, C, h, w), drawn in the official order."""
        batch = images.shape[0]
        if isinstance(seed, torch.Generator):
            generators, seeds = [seed] * batch, [None] * batch
        else:
            seeds = (
                [seed + i for i in range(batch)]
                if isinstance(seed, (int, np.integer))
                else list(seed)
            )
            if len(seeds) != batch or not all(isinstance(s, (int, np.integer)) for s in seeds):
                raise ValueError(f"seed must be an int or a list of {batch} ints, got {seed!r}")
            for value in seeds:  # seed + i of a batch must stay in range too
                _int_in("seed", value, *SEED_RANGE)
            seeds = [int(s) for s in seeds]
            generators = [torch.Generator().manual_seed(s) for s in seeds]
        cond_noise, latent_noise = [], []
        for index, generator in enumerate(generators):
            cond_noise.append(torch.randn(images[index : index + 1].shape, generator=generator))
            latent_noise.append(torch.randn(latent_shape, generator=generator))
        return seeds, torch.cat(cond_noise), torch.stack(latent_noise)
