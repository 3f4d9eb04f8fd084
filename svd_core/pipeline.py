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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import sampling
from .conditioning import encode_conditioning, guided_denoiser
from .config import SVDConfig

if TYPE_CHECKING:  # for the type hints only
    from .model import SVDModel
from .io import RESIZE_MODES, check_video_size, fit_image, load_image, save_video, to_uint8
from .version import __version__

GUIDANCE_SCHEDULES = tuple(sampling.GUIDANCE_SCHEDULES)  # the names; the functions: sampling
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


def _check_fps(value) -> float:
    return _number_in(
        "fps",
        value,
        *FPS_RANGE,
        f"positive, from {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g} (the model is conditioned on "
        "fps_id = fps - 1, which must be >= 0)",
    )


# The one check of each sampling value (name -> value -> the value as int or float, or ValueError
# naming the value and the range): SamplingOptions and check_options both use it.
VALUE_CHECKS = {
    "num_frames": lambda v: _int_in("num_frames", v, 1, MAX_FRAMES),
    "num_steps": lambda v: _int_in("num_steps", v, 1, MAX_STEPS),
    "decode_chunk_size": lambda v: _positive_int("decode_chunk_size", v),
    "fps": _check_fps,
    "motion_bucket_id": lambda v: _number_in("motion_bucket_id", v, *MOTION_BUCKET_RANGE),
    "cond_aug": lambda v: _number_in("cond_aug", v, *COND_AUG_RANGE),
    "min_guidance": lambda v: _number_in("min_guidance", v, *GUIDANCE_RANGE),
    "max_guidance": lambda v: _number_in("max_guidance", v, *GUIDANCE_RANGE),
}


def _check_seed(seed) -> None:
    if seed is None or isinstance(seed, torch.Generator):
        return
    seeds = [seed] if isinstance(seed, (int, np.integer)) else seed
    if isinstance(seed, (str, bytes)) or not isinstance(seeds, Sequence):
        raise ValueError(f"seed must be an int, a list of ints or a torch.Generator, got {seed!r}")
    for value in seeds:
        _int_in("seed", value, *SEED_RANGE)


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
    line calls it before loading one; SamplingOptions checks every value the same way.
    """
    given = {
        "num_frames": num_frames,
        "num_steps": num_steps,
        "decode_chunk_size": decode_chunk_size,
        "fps": fps,
        "motion_bucket_id": motion_bucket_id,
        "cond_aug": cond_aug,
        "min_guidance": min_guidance,
        "max_guidance": max_guidance,
    }
    checked = {k: VALUE_CHECKS[k](v) for k, v in given.items() if v is not None}
    _check_seed(seed)
    if seed is not None and not isinstance(seed, torch.Generator):
        checked["seed"] = seed
    return checked


def _named(table: dict, what: str, choice):
    """A sampler or guidance schedule given as a function (used as is) or by its name in `table`."""
    if callable(choice):
        return choice
    if isinstance(choice, str) and choice in table:
        return table[choice]
    raise ValueError(f"{what} must be one of {sorted(table)} or a function, got {choice!r}")


@dataclass(frozen=True)
class SamplingOptions:
    """Every setting of one run but the image, the seed and the memory mode, checked once.

    Build it with `SamplingOptions.for_model(config, **given)`: what is not given (None) is the
    model's preset default, and the video size is checked against the model's size multiple.
    Constructing it checks every value (the ranges at the top of this module, VALUE_CHECKS) and
    turns a sampler or guidance name into its function (sampling.SAMPLERS,
    sampling.GUIDANCE_SCHEDULES); a function is taken as it is, so a new sampler needs no table
    entry: pass `sampler=my_sampler(denoiser, x, sigmas, callback=None, progress=False)` or
    `guidance=my_schedule(min_scale, max_scale, num_frames) -> (F,)`.
    """

    num_frames: int
    num_steps: int
    fps: float  # the clip's frame rate; the model is conditioned on fps_id = fps - 1
    motion_bucket_id: float
    cond_aug: float
    min_guidance: float  # guidance scale of the first frame
    max_guidance: float  # ... and of the last
    decode_chunk_size: int  # frames the VAE decodes at a time
    height: int
    width: int
    resize: str = "crop"  # how the image is fitted to (height, width): io.RESIZE_MODES
    sampler: sampling.Sampler | str = "euler"
    guidance: sampling.GuidanceSchedule | str = "linear"
    numerics: str = "official"  # or "diffusers": its choices where the references differ

    def __post_init__(self) -> None:
        for name, check in VALUE_CHECKS.items():
            object.__setattr__(self, name, check(getattr(self, name)))
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        sampler = _named(sampling.SAMPLERS, "sampler", self.sampler)
        object.__setattr__(self, "sampler", sampler)
        guidance = _named(sampling.GUIDANCE_SCHEDULES, "guidance", self.guidance)
        object.__setattr__(self, "guidance", guidance)
        if self.numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {self.numerics!r}")

    @classmethod
    def for_model(cls, config: SVDConfig, **given) -> SamplingOptions:
        """The options of a run of a model with `config`: None (or absent) = the preset's value."""
        values = {f.name: getattr(config, f.name, None) for f in fields(cls)}  # the preset's
        values.update({k: v for k, v in given.items() if v is not None})
        options = cls(**{k: v for k, v in values.items() if v is not None})
        factor, multiple = config.vae.downscale_factor, config.size_multiple
        check_video_size(
            options.height,
            options.width,
            multiple,
            f" (this model's VAE downsamples {factor}x, then its UNet {multiple // factor}x)",
        )
        return options

    def guidance_scales(self) -> torch.Tensor:
        """The guidance scale of every frame: (num_frames,)."""
        return self.guidance(self.min_guidance, self.max_guidance, self.num_frames)

    def to_dict(self) -> dict:
        """The options as plain values (a sampler or schedule by its name), e.g. for a video's
        metadata."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, table in (
            ("sampler", sampling.SAMPLERS),
            ("guidance", sampling.GUIDANCE_SCHEDULES),
        ):
            function = values[name]
            values[name] = next((k for k, v in table.items() if v is function), function.__name__)
        return values


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

    def __init__(self, model: SVDModel, dtype: torch.dtype | None = None) -> None:
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
        (draws in sequence), or None (a `random_seed()`, recorded in each Video's `seed`).
        noise: initial unit-variance latent noise (B, F, C, h, w), used instead of the seeded draw
        (then scaled by sqrt(1 + sigma_max^2)).
        resize: "crop" (the largest centered box of the video's aspect ratio, scaled to the size),
        "squash", or "none" (the image must have the size). height and width: multiples of
        `self.size_multiple` (64 for SVD), at most 4096.
        sampler: a sampler function (`sampling.sample_euler`, ..., or your own with that
        signature) or its name: "euler" (official), "heun" or "dpmpp_2m". guidance: a schedule
        function `(min_scale, max_scale, num_frames) -> (F,)` or its name: "linear" (official),
        "constant" (max_guidance everywhere) or "triangle". Every option is checked once, into a
        frozen `SamplingOptions` (`SamplingOptions.for_model(model.config, ...)` builds the same). batch_guidance=False runs the two
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
        options = SamplingOptions.for_model(
            cfg,
            num_frames=num_frames,
            num_steps=num_steps,
            fps=fps,
            motion_bucket_id=motion_bucket_id,
            cond_aug=cond_aug,
            min_guidance=min_guidance,
            max_guidance=max_guidance,
            decode_chunk_size=decode_chunk_size,
            height=height,
            width=width,
            resize=resize,
            sampler=sampler,
            guidance=guidance,
            numerics=numerics,
        )
        _check_seed(seed)
        if batch_guidance is None:
            batch_guidance = not self.model.low_memory
        elif not isinstance(batch_guidance, bool):
            raise ValueError(f"batch_guidance must be True, False or None, got {batch_guidance!r}")
        if noise is not None:
            if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
                kind = noise.dtype if isinstance(noise, torch.Tensor) else type(noise).__name__
                raise ValueError(f"noise must be a float tensor (B, F, C, h, w), got {kind}")
            if not torch.isfinite(noise).all():
                raise ValueError("noise contains NaN or infinite values")
        _warn_outside_official(options.fps, options.motion_bucket_id)
        return self._sample(image, options, seed, noise, batch_guidance, progress, callback)

    def _sample(
        self,
        image,
        options: SamplingOptions,
        seed,
        noise: torch.Tensor | None,
        batch_guidance: bool,
        progress: bool,
        callback,
    ) -> Video | list[Video]:
        """The run itself, with every argument checked (`__call__`)."""
        cfg, o = self.config, options
        single = not isinstance(image, (list, tuple)) and not (
            isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] > 1
        )
        images = [
            load_image(item) for item in (image if isinstance(image, (list, tuple)) else [image])
        ]
        if not images:
            raise ValueError("no images given")
        images = torch.cat(
            [fit_image(item, o.height, o.width, o.resize, cfg.size_multiple) for item in images]
        )
        batch = images.shape[0]
        factor = cfg.vae.downscale_factor
        latent_shape = (
            o.num_frames,
            cfg.vae.latent_channels,
            o.height // factor,
            o.width // factor,
        )

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

        device = self.device
        cond = encode_conditioning(
            self.model,
            images.to(device),
            cond_noise.to(device),
            fps_id=o.fps - 1,
            motion_bucket_id=o.motion_bucket_id,
            cond_aug=o.cond_aug,
            clip_preprocess=o.numerics,
        )
        encoder_dtype = next(self.model.image_encoder.parameters()).dtype
        vae_dtype = next(self.model.vae.parameters()).dtype
        _check_finite(cond.context, "the image encoder's embedding of the image", encoder_dtype)
        _check_finite(cond.image_latent, "the VAE encoder's latent of the image", vae_dtype)
        denoiser = guided_denoiser(
            self.model.unet,
            cond,
            o.guidance_scales().to(device),
            batched=batch_guidance,
            guide="denoised" if o.numerics == "official" else "output",
        )
        sigmas = sampling.karras_sigmas(
            o.num_steps, cfg.sigma_min, cfg.sigma_max, numerics=o.numerics
        ).to(device)
        x = latent_noise.to(device) * torch.sqrt(1.0 + sigmas[0] ** 2)

        unet_dtype = next(self.model.unet.parameters()).dtype

        def check_and_report(info: dict) -> None:
            step = f"step {info['step']} (sigma {info['sigma']:.4g}) of sampling"
            _check_finite(info["denoised"], f"the UNet's denoised latent at {step}", unet_dtype)
            if callback is not None:
                callback(info)

        with self.model.resident("unet"):  # a low-memory model reads the UNet now, frees it after
            latents = o.sampler(denoiser, x, sigmas, callback=check_and_report, progress=progress)
        with self.model.resident("vae_decoder"):
            decoded = self.model.vae.decode(
                (latents / cfg.vae.scaling_factor).to(vae_dtype), chunk_size=o.decode_chunk_size
            )
        _check_finite(decoded, "the VAE decoder's frames", vae_dtype)
        float_frames = ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()  # (B, F, 3, H, W)
        settings = {"svd_core": __version__, "model": cfg.name, **o.to_dict()}
        videos = []
        for index in range(batch):
            frames = to_uint8(float_frames[index], rounding=o.numerics == "diffusers")
            latent = latents[index].float().cpu()
            metadata = {**settings, "seed": seeds[index]}
            videos.append(Video(frames, o.fps, float_frames[index], latent, seeds[index], metadata))
        return videos[0] if single else videos

    @property
    def size_multiple(self) -> int:
        """Video height and width must be multiples of this: the VAE's times the UNet's downsampling
        (64 for SVD; 32 for the tiny presets, whose UNet has 3 levels)."""
        return self.config.size_multiple

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
