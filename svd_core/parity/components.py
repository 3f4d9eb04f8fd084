"""The six comparisons of a parity run, each on inputs that both sides receive identically.

| component     | svd_core                                  | diffusers                                      |
|---------------|-------------------------------------------|------------------------------------------------|
| image_encoder | `model.image_encoder(image)`              | `pipe._encode_image(pil_image)` (its CLIP path) |
| vae_encode    | `model.vae.encode(noisy_image)`           | `pipe.vae.encode(noisy_image).latent_dist.mode()` |
| unet          | `model.unet(x, c_noise, context, vector)` | `pipe.unet(x, c_noise, context, added_time_ids)` |
| vae_decode    | `model.vae.decode(z)`                     | `pipe.vae.decode(z, num_frames=F)`             |
| sampler_step  | one guided Euler step (sampling.py)       | the pipeline's loop body: scheduler + UNet      |
| sampling_run  | `SVDPipeline(model)(image, seed=S, ...)`  | `pipe(image, generator=seed S, ...)`            |

Inputs: a PIL image of the run's size (the pipelines' own input; with `--image`, that image cropped
to the size, else a seeded synthetic one), so neither side resizes it and diffusers takes its PIL
path (a tensor would skip its CLIP resize); the VAE encodes it with the cond_aug noise of the
seed; the UNet gets a batch of 2 random latents at sigma_max and at sigma 1, a random context and
the model's fps_id / motion bucket / cond_aug; the decoder random latents of the diffusion's scale
(unit variance / 0.18215), all frames in one chunk. The sampler step starts both sides from the
same latent noise and the same conditioning tensors; the sampling run gives both pipelines the
same image, seed (conditioning noise first, then latent noise, from one CPU generator, as both
draw them), frames, steps, fps, motion bucket, cond_aug and guidance range (the model's preset).

In half precision our image encoder gets the image in the run's dtype, as svd_core's pipeline
hands it over (conditioning.py), so its resize and normalization run in that dtype, while diffusers
preprocesses in float32: the image encoder's first row, the preprocessed pixels, shows that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..conditioning import Conditioning, guided_denoiser
from ..io import fit_image, load_image, to_uint8
from ..loading.clip_maps import diffusers_clip_map
from ..loading.unet_maps import diffusers_unet_map
from ..loading.vae_maps import diffusers_vae_map
from ..model import SVDModel
from ..nn.embeddings import embed_added
from ..pipeline import SVDPipeline
from ..sampling import karras_sigmas, linear_guidance, sample_euler, v_prediction_scalings
from .blocks import compare_blocks, match_blocks, recording
from .reference import clip_input_size, quiet_reference, vae_in_pipeline_dtype
from .report import ComponentResult, compare, psnr

# Noise levels of the UNet comparison's batch of two (None: the model's sigma_max).
UNET_SIGMAS = (None, 1.0)


@dataclass
class Setup:
    """Everything a comparison needs: both models, the run's settings and its input image."""

    model: SVDModel
    reference: Any  # diffusers.StableVideoDiffusionPipeline
    height: int
    width: int
    num_frames: int
    num_steps: int
    seed: int
    dtype: torch.dtype
    numerics: str
    detail: str
    image: Image.Image  # height x width, RGB

    @property
    def device(self) -> torch.device:
        return next(self.model.unet.parameters()).device

    @property
    def latent_size(self) -> tuple[int, int]:
        factor = self.model.config.vae.downscale_factor
        return self.height // factor, self.width // factor

    @property
    def added_ids(self) -> tuple[float, float, float]:
        """(fps_id, motion_bucket_id, cond_aug) of the model's preset; fps_id = fps - 1 on both sides."""
        cfg = self.model.config
        return float(cfg.fps - 1), float(cfg.motion_bucket_id), float(cfg.cond_aug)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator for the inputs; `offset` keeps the comparisons' inputs independent."""
        return torch.Generator().manual_seed(self.seed + offset)


def conditioning_image(height: int, width: int, seed: int, path: str | None = None) -> Image.Image:
    """The image both sides are conditioned on: `path` center-cropped and resized to the size, or a
    seeded synthetic one (ramps plus noise: every frequency, every channel different)."""
    if path is not None:
        fitted = fit_image(load_image(path), height, width, "crop")  # (1, 3, H, W) in [-1, 1]
        return Image.fromarray(to_uint8((fitted + 1.0) / 2.0, rounding=True)[0])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    scale = 256.0 / max(height, width)
    ramps = np.stack([xx * scale * 3 % 200, yy * scale * 3 % 200, (xx + yy) * scale % 200], -1)
    pixels = ramps + rng.integers(0, 56, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


# ---- networks ------------------------------------------------------------------------------------


def compare_image_encoder(s: Setup) -> ComponentResult:
    """CLIP: our encoder (resize, normalization, ViT) against diffusers' `_encode_image` on the
    PIL image (its resize, its CLIPImageProcessor normalization, transformers' ViT)."""
    ours_net, theirs_net = s.model.image_encoder, s.reference.image_encoder
    key_map = diffusers_clip_map(s.model.config.image_encoder)
    pairs, skipped = match_blocks(
        ours_net, theirs_net, key_map, detail=s.detail, inputs_of=("patch_embed",)
    )
    image = load_image(s.image).to(s.device)
    previous = ours_net.preprocess
    ours_net.preprocess = s.numerics  # "official": kornia's resize; "diffusers": its copy
    try:
        with torch.no_grad(), clip_input_size(ours_net.config.image_size):
            with recording(ours_net, pairs, "ours") as ours_record:
                ours = ours_net(image.to(s.dtype))
            with recording(theirs_net, pairs, "theirs") as theirs_record:
                theirs = s.reference._encode_image(s.image, s.device, 1, False)[:, 0]
    finally:
        ours_net.preprocess = previous
    blocks, more = compare_blocks(pairs, ours_record, theirs_record, batch=1, frames=1)
    output = compare("image_encoder(image)", "_encode_image(image)", ours, theirs)
    return ComponentResult("image_encoder", output, blocks=blocks, skipped=skipped + more)


def compare_vae_encode(s: Setup) -> ComponentResult:
    """The conditioning-frame encoder: posterior mode of the noise-augmented image."""
    image = load_image(s.image)
    noise = torch.randn(image.shape, generator=s.generator())  # the pipelines' first draw
    noisy = (image + s.model.config.cond_aug * noise).to(s.device)
    key_map = diffusers_vae_map(s.model.config.vae)
    ours_net, theirs_net = s.model.vae, s.reference.vae
    pairs, skipped = match_blocks(
        ours_net, theirs_net, key_map, prefixes=("encoder.", "quant_conv"), detail=s.detail
    )
    with torch.no_grad():
        with recording(ours_net, pairs, "ours") as ours_record:
            ours = ours_net.encode(noisy)
        with recording(theirs_net, pairs, "theirs") as theirs_record:
            theirs = theirs_net.encode(noisy).latent_dist.mode()
    blocks, more = compare_blocks(pairs, ours_record, theirs_record, batch=1, frames=1)
    output = compare("vae.encode(image)", "vae.encode(image).latent_dist.mode()", ours, theirs)
    return ComponentResult("vae_encode", output, blocks=blocks, skipped=skipped + more)


def unet_inputs(s: Setup) -> dict[str, torch.Tensor]:
    """The UNet comparison's inputs, on the device: x (2, F, C, h, w) in the run's dtype, c_noise
    (2,) for sigma_max and sigma 1, context (2, 1, D), the added ids (2, 3) and their vector."""
    cfg = s.model.config
    g = s.generator(1)
    h, w = s.latent_size
    batch = len(UNET_SIGMAS)
    x = torch.randn(batch, s.num_frames, cfg.unet.in_channels, h, w, generator=g)
    sigmas = torch.tensor([cfg.sigma_max if v is None else v for v in UNET_SIGMAS])
    context = torch.randn(batch, 1, cfg.unet.context_dim, generator=g)
    ids = torch.tensor([s.added_ids] * batch)
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], dim=cfg.unet.addition_embed_dim)
    return {
        "x": x.to(s.device, s.dtype),
        "c_noise": (0.25 * sigmas.log()).to(s.device),  # what both pipelines pass as timestep
        "context": context.to(s.device, s.dtype),
        "ids": ids.to(s.device),
        "vector": vector.to(s.device),
    }


def compare_unet(s: Setup) -> ComponentResult:
    """One UNet call on a batch of 2 (sigma_max and sigma 1), in the run's dtype."""
    inputs = unet_inputs(s)
    x, c_noise, context = inputs["x"], inputs["c_noise"], inputs["context"]
    cfg = s.model.config
    ours_net, theirs_net = s.model.unet, s.reference.unet
    pairs, skipped = match_blocks(
        ours_net, theirs_net, diffusers_unet_map(cfg.unet), detail=s.detail
    )
    with torch.no_grad():
        with recording(ours_net, pairs, "ours") as ours_record:
            ours = ours_net(x, c_noise, context, inputs["vector"])
        with recording(theirs_net, pairs, "theirs") as theirs_record:
            theirs = theirs_net(
                x, c_noise, encoder_hidden_states=context, added_time_ids=inputs["ids"]
            ).sample
    blocks, more = compare_blocks(pairs, ours_record, theirs_record, len(x), s.num_frames)
    output = compare(
        "unet(x, c_noise, context, vector)", "unet(x, t, context, time_ids)", ours, theirs
    )
    return ComponentResult("unet", output, blocks=blocks, skipped=skipped + more)


def compare_vae_decode(s: Setup) -> ComponentResult:
    """The (temporal) decoder on random latents of the diffusion's scale, all frames at once."""
    cfg = s.model.config.vae
    h, w = s.latent_size
    z = torch.randn(1, s.num_frames, cfg.latent_channels, h, w, generator=s.generator(2))
    z = (z / cfg.scaling_factor).to(s.device)
    ours_net, theirs_net = s.model.vae, s.reference.vae
    pairs, skipped = match_blocks(
        ours_net, theirs_net, diffusers_vae_map(cfg), ("decoder.", "post_quant_conv"), s.detail
    )
    kwargs = {"num_frames": s.num_frames} if cfg.temporal_decoder else {}
    with torch.no_grad():
        with recording(ours_net, pairs, "ours") as ours_record:
            ours = ours_net.decode(z, chunk_size=s.num_frames)[0]
        with recording(theirs_net, pairs, "theirs") as theirs_record:
            theirs = theirs_net.decode(z[0], **kwargs).sample
    blocks, more = compare_blocks(pairs, ours_record, theirs_record, batch=1, frames=s.num_frames)
    output = compare("vae.decode(z)", "vae.decode(z, num_frames=F)", ours, theirs)
    return ComponentResult("vae_decode", output, blocks=blocks, skipped=skipped + more)


# ---- sampling ------------------------------------------------------------------------------------


def sampler_inputs(s: Setup) -> tuple[torch.Tensor, Conditioning, torch.Tensor]:
    """Unit latent noise (1, F, C, h, w), a random conditioning (context in the run's dtype, image
    latent, the model's added vector) and the guidance scale per frame, on the device."""
    cfg = s.model.config
    g = s.generator(3)
    h, w = s.latent_size
    noise = torch.randn(1, s.num_frames, cfg.vae.latent_channels, h, w, generator=g)
    context = torch.randn(1, 1, cfg.unet.context_dim, generator=g)
    image_latent = torch.randn(1, cfg.vae.latent_channels, h, w, generator=g)
    vector = embed_added(*s.added_ids, dim=cfg.unet.addition_embed_dim)
    cond = Conditioning(
        context.to(s.device, s.dtype), image_latent.to(s.device), vector.to(s.device)
    )
    scale = linear_guidance(cfg.min_guidance, cfg.max_guidance, s.num_frames)
    return noise.to(s.device), cond, scale.to(s.device)


def compare_sampler_step(s: Setup) -> ComponentResult:
    """The first Euler step of an n-step run from the same noise and the same conditioning.

    Ours: sampling.karras_sigmas, the guided denoiser and sample_euler. diffusers: its scheduler
    (EulerDiscreteScheduler with Karras sigmas) and UNet in the order of the pipeline's loop body:
    scale_model_input, concatenate the image latent, UNet, guidance on the output, scheduler.step.
    Stages compared: the sigmas, the UNet's noise input, the scaled latent, the denoised estimate
    and the latent after the step.
    """
    cfg = s.model.config
    frames, device, dtype = s.num_frames, s.device, s.dtype
    noise, cond, scale = sampler_inputs(s)
    context, image_latent = cond.context, cond.image_latent
    fps_id, motion, cond_aug = s.added_ids

    # svd_core
    sigmas = karras_sigmas(s.num_steps, cfg.sigma_min, cfg.sigma_max, numerics=s.numerics)
    sigmas = sigmas.to(device)
    guide = "denoised" if s.numerics == "official" else "output"
    denoiser = guided_denoiser(s.model.unet, cond, scale, guide=guide)
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
    seen: dict = {}
    with torch.no_grad():
        x_next = sample_euler(denoiser, x, sigmas[:2], callback=seen.update)
    _, _, c_in, c_noise = v_prediction_scalings(sigmas[:1])

    # diffusers, as its pipeline's loop body runs the first step
    pipe = s.reference
    scheduler = pipe.scheduler
    scheduler.set_timesteps(s.num_steps, device=device)
    t = scheduler.timesteps[0]
    latents = (noise * scheduler.init_noise_sigma).to(dtype)  # prepare_latents, in its dtype
    guided = cfg.max_guidance > 1  # pipe.do_classifier_free_guidance
    ids = torch.tensor([[fps_id, motion, cond_aug]], device=device, dtype=dtype)
    latent_in = torch.cat([latents] * 2) if guided else latents
    scaled = scheduler.scale_model_input(latent_in, t)
    repeated = image_latent[:, None].repeat(1, frames, 1, 1, 1).to(dtype)
    if guided:
        repeated = torch.cat([torch.zeros_like(repeated), repeated])
        embeddings = torch.cat([torch.zeros_like(context), context])
        ids = torch.cat([ids, ids])
    else:
        embeddings = context
    with torch.no_grad():
        out = pipe.unet(
            torch.cat([scaled, repeated], dim=2),
            t,
            encoder_hidden_states=embeddings,
            added_time_ids=ids,
        ).sample
        if guided:
            uncond, conditional = out.chunk(2)
            out = uncond + scale.to(dtype).reshape(1, -1, 1, 1, 1) * (conditional - uncond)
        step = scheduler.step(out, t, latents)

    stages = [
        compare("karras_sigmas(n)", "scheduler.sigmas", sigmas, scheduler.sigmas),
        compare("c_noise = ln(sigma_0) / 4", "scheduler.timesteps[0]", c_noise, t.reshape(1)),
        compare("c_in · x", "scale_model_input(x)", x * c_in.reshape(-1, 1, 1, 1, 1), scaled[-1:]),
        compare(
            "denoised", "step.pred_original_sample", seen["denoised"], step.pred_original_sample
        ),
        compare("x after step 1", "step.prev_sample", x_next, step.prev_sample),
    ]
    return ComponentResult("sampler_step", stages[-1], blocks=stages)


def compare_sampling_run(s: Setup) -> ComponentResult:
    """Both pipelines end to end: image, seed and settings alike; latents after each step, frames."""
    cfg = s.model.config
    ours_steps: list[torch.Tensor] = []
    their_steps: list[torch.Tensor] = []
    settings = dict(
        num_frames=s.num_frames,
        fps=cfg.fps,
        motion_bucket_id=cfg.motion_bucket_id,
        decode_chunk_size=s.num_frames,
        height=s.height,
        width=s.width,
    )

    def on_step(pipe, index, timestep, tensors) -> dict:
        their_steps.append(tensors["latents"].detach().float().cpu())
        return {}

    size = cfg.image_encoder.image_size
    with clip_input_size(size), vae_in_pipeline_dtype(s.reference, s.dtype):
        video = SVDPipeline(s.model)(
            s.image,
            num_steps=s.num_steps,
            cond_aug=cfg.cond_aug,
            min_guidance=cfg.min_guidance,
            max_guidance=cfg.max_guidance,
            seed=s.seed,
            resize="none",
            numerics=s.numerics,
            progress=False,
            callback=lambda info: ours_steps.append(info["x"].detach().float().cpu()),
            **settings,
        )
        with quiet_reference():  # diffusers logs advice on each of its own VAE casts
            frames = s.reference(
                s.image,
                num_inference_steps=s.num_steps,
                noise_aug_strength=cfg.cond_aug,
                min_guidance_scale=cfg.min_guidance,
                max_guidance_scale=cfg.max_guidance,
                generator=torch.Generator().manual_seed(s.seed),
                output_type="pt",
                callback_on_step_end=on_step,
                **settings,
            ).frames[0]
    ours_after = ours_steps[1:] + [video.latents[None]]  # the sampler reports x before each step
    rows = [
        compare(f"latents after step {i + 1}", f"latents after step {i + 1}", mine, theirs)
        for i, (mine, theirs) in enumerate(zip(ours_after, their_steps, strict=True))
    ]
    rows.append(
        compare("video frames [0, 1]", "frames (output_type='pt')", video.float_frames, frames)
    )
    result = ComponentResult("sampling_run", rows[-1], blocks=rows)
    result.psnr = psnr(video.float_frames, frames)
    return result


RUNNERS = {
    "image_encoder": compare_image_encoder,
    "vae_encode": compare_vae_encode,
    "unet": compare_unet,
    "vae_decode": compare_vae_decode,
    "sampler_step": compare_sampler_step,
    "sampling_run": compare_sampling_run,
}
COMPONENTS = tuple(RUNNERS)
# The components that run the reference's VAE: a model whose VAE diffusers cannot build has no
# reference for them (reference.vae_without_counterpart).
NEEDS_VAE = ("vae_encode", "vae_decode", "sampling_run")
