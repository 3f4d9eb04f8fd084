"""The known numerical differences between the official code (sgm) and diffusers, measured live.

Where the two references differ, svd_core follows the official numerics (numerics="official"),
and numerics="diffusers" takes diffusers' choice instead. `svd-core parity --known-differences`
measures each on the run's model and adds this table to the report. Measured on random tiny
weights (seed 0, 64x64, 5 frames, 3 steps), float32 (the GroupNorm eps in float64, see
`norm_eps`), one CPU thread, with

    svd-core parity --model random:tiny --known-differences

| difference | official (sgm) | diffusers | size on random:tiny | numerics="diffusers" |
|---|---|---|---|---|
| GroupNorm eps of UNet res blocks | 1e-5 in all | 1e-6 in the res blocks of its cross-attention down blocks and of all up blocks (52 of 68 norms in tiny) | UNet output 1.9e-4 rel.; 3.5e-15 with diffusers' eps (float64) | adopts diffusers' eps (parity only: the pipeline keeps 1e-5) |
| CLIP resize | kornia: Gaussian blur only when a side shrinks | always blurs (sigma 0.001 for a growing side: an exact identity) | pixels 0 (upscaling and downscaling) max abs against diffusers' own resize; embedding 0 between our two modes | preprocess "diffusers" (always blur) |
| scheduler sigmas | EDM schedule in float32 | in float64, rounded to float32 (EulerDiscreteScheduler) | 1.7e-6 max rel. per sigma (4 steps); 0 in float64 | float64 schedule |
| guidance target | mixes the two denoised estimates | mixes the two network outputs | denoised 6.7e-8 rel. (round-off: D is affine in the output) | guides the output |
| unconditional half at max guidance <= 1 | always runs both halves, scale 1 | runs the conditional half only | denoised 3.4e-7 rel. (round-off) | none (round-off only) |
| latent dtype between steps | float32 | the pipeline's dtype (drawn in it and rounded after every step) | 0 in float32 (exact); 5.3e-3 rel. after 3 steps with bfloat16 latents | none (0 in float32) |
| fps conditioning | fps_id as given (script default 6) | fps - 1 (default fps 7 -> 6) | vector 0 (same fps_id on both sides); conditioning on fps instead of fps - 1 would change the UNet output by 1.2e-2 rel. | none (same convention) |
| float frames to uint8 | truncates: (x * 255).astype(uint8) | rounds | 50% of the values one level apart | rounds |

Elsewhere the two agree to round-off; `svd-core parity --model random:tiny` (numerics
"diffusers", float32) measured: image encoder 8e-8, VAE encoder 0, UNet 2.3e-6 (float32 round-off:
svd_core's inference paths order the sums differently; 3.5e-15 in float64), VAE decoder 3.5e-6,
sampler step 1e-6 relative, sampling run 1e-5 (PSNR 119 dB).

In half precision svd_core and diffusers also differ where neither reference is "official":
diffusers holds its whole pipeline (VAE and latents included) in the dtype, svd_core keeps the VAE
and the latents in float32; and svd_core's pipeline hands the image encoder the image in its dtype,
so the CLIP resize and normalization run in half precision (diffusers preprocesses in float32),
which the image encoder's first row, its preprocessed pixels, shows.

Not a numerical difference but a trap when comparing: a torch tensor given to diffusers' pipeline
skips its CLIP resize, so `svd-core parity` gives both pipelines the same PIL image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..conditioning import conditioned_network, guided_denoiser
from ..io import to_uint8
from ..loading.unet_maps import diffusers_unet_map
from ..nn import ResBlock
from ..nn.embeddings import embed_added
from ..sampling import denoise_v_prediction, karras_sigmas, sample_euler
from .components import Setup, sampler_inputs, unet_inputs
from .reference import adopted_norm_eps, differing_norm_eps, quiet_reference
from .report import KnownDifference, compare

HALF_LATENTS = torch.bfloat16  # the latent dtype of the measurement in a float32 run


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return compare("ours", "theirs", ours, theirs).relative


def _sci(value: float) -> str:
    """1.9e-4 style; an exact 0 as 0."""
    return "0" if value == 0 else f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e+")


@contextmanager
def in_float64(*networks: nn.Module) -> Iterator[None]:
    """Within the block, `networks` hold and compute in float64; each gets its dtype back on exit.

    The round trip is exact: float64 holds every float32 and half-precision value. Memory: each
    network's weights are held in float64 (twice float32's size) while in the block.
    """
    dtypes = [next(network.parameters()).dtype for network in networks]
    with quiet_reference():  # diffusers advises against casting with `.to` on every cast
        for network in networks:
            network.to(torch.float64)
    try:
        yield
    finally:
        with quiet_reference():
            for network, dtype in zip(networks, dtypes, strict=True):
                network.to(dtype)


@torch.no_grad()
def norm_eps(s: Setup) -> KnownDifference:
    """GroupNorm eps of the UNet's res blocks: our official eps vs diffusers', then adopted.

    Measured in float64, whatever the run's dtype: the question is which eps each library uses, a
    matter of definition, and in float64 the two UNets with the same eps agree to float64
    round-off (about 1e-15), where float32 would leave its own round-off (about 1e-6 on random
    tiny weights, from the different order of operations) on top of the eps effect.
    """
    unet, reference = s.model.unet, s.reference.unet
    key_map = diffusers_unet_map(s.model.config.unet)
    inputs = {name: value.double() for name, value in unet_inputs(s).items()}
    x, c_noise, context = inputs["x"], inputs["c_noise"], inputs["context"]
    with in_float64(unet, reference):
        theirs = reference(x, c_noise, encoder_hidden_states=context, added_time_ids=inputs["ids"])
        official = _rel(unet(x, c_noise, context, inputs["vector"]), theirs.sample)
        with adopted_norm_eps([(unet, reference, key_map)]):
            adopted = _rel(unet(x, c_noise, context, inputs["vector"]), theirs.sample)
    differing = differing_norm_eps(unet, reference, key_map)
    total = 2 * sum(isinstance(module, ResBlock) for module in unet.modules())  # norm1, norm2
    places = sorted({".".join(name.split(".")[:2]) for name in differing})
    their_names = [
        key_map.entries[f"{name}.weight"].keys[0].rpartition(".")[0] for name in differing
    ]
    eps = sorted({reference.get_submodule(name).eps for name in their_names})
    return KnownDifference(
        "GroupNorm eps of UNet res blocks",
        "1e-5 in all",
        f"{', '.join(f'{e:.0e}'.replace('e-0', 'e-') for e in eps) or 'the same'} in {len(differing)} of {total} "
        f"res-block norms ({', '.join(places) or 'none'})",
        f"UNet output {_sci(official)} rel.; {_sci(adopted)} with diffusers' eps (float64)",
        "adopts diffusers' eps (parity only; the pipeline keeps 1e-5)",
    )


@torch.no_grad()
def clip_resize(s: Setup) -> KnownDifference:
    """The CLIP resize: our two modes against each other and against diffusers' own resize."""
    from diffusers.pipelines.stable_video_diffusion import pipeline_stable_video_diffusion as svd

    encoder = s.model.image_encoder
    size = encoder.config.image_size
    g = s.generator(4)
    shapes = {"upscaling": (size * 3 // 4, size // 2), "downscaling": (size * 2, size * 3 // 2)}
    pixels, embeddings = {}, {}
    previous = encoder.preprocess
    try:
        for label, (height, width) in shapes.items():
            image = (torch.rand(1, 3, height, width, generator=g) * 2 - 1).to(s.device)
            encoder.preprocess = "official"
            official = encoder(image.to(s.dtype))
            official_pixels = encoder.preprocess_image(image)
            encoder.preprocess = "diffusers"
            embeddings[label] = _rel(official, encoder(image.to(s.dtype)))
            theirs = (svd._resize_with_antialiasing(image, (size, size)) + 1.0) / 2.0
            theirs = (theirs - encoder.mean) / encoder.std
            pixels[label] = compare("ours", "theirs", official_pixels, theirs).max_abs
    finally:
        encoder.preprocess = previous
    return KnownDifference(
        "CLIP resize",
        "kornia: Gaussian blur only when a side shrinks",
        "always blurs (sigma 0.001 for a growing side: an exact identity)",
        f"pixels {_sci(pixels['upscaling'])} (upscaling), {_sci(pixels['downscaling'])} (downscaling) "
        f"max abs against diffusers' resize; embedding {_sci(max(embeddings.values()))} rel. "
        "between our two modes",
        'preprocess "diffusers" (always blur)',
    )


def scheduler_sigmas(s: Setup) -> KnownDifference:
    """The EDM sigmas: our float32 and float64 computations against diffusers' scheduler."""
    cfg = s.model.config
    steps = cfg.num_steps
    scheduler = s.reference.scheduler
    scheduler.set_timesteps(steps, device="cpu")
    theirs = scheduler.sigmas.double()[:-1]

    def worst(numerics: str) -> float:
        ours = karras_sigmas(steps, cfg.sigma_min, cfg.sigma_max, numerics=numerics).double()[:-1]
        return ((ours - theirs).abs() / theirs).max().item()

    return KnownDifference(
        "scheduler sigmas",
        "EDM schedule computed in float32",
        "in float64, rounded to float32 (EulerDiscreteScheduler)",
        f"{_sci(worst('official'))} max rel. per sigma ({steps} steps); {_sci(worst('diffusers'))} "
        "in float64",
        "float64 schedule",
    )


@torch.no_grad()
def guidance(s: Setup) -> list[KnownDifference]:
    """Guidance on the denoised estimate vs the output, and the skipped unconditional half."""
    noise, cond, scale = sampler_inputs(s)
    sigma = torch.ones(1, device=s.device)
    x = noise * torch.sqrt(1.0 + sigma**2)
    unet = s.model.unet
    denoised = guided_denoiser(unet, cond, scale, guide="denoised")(x, sigma)
    output = guided_denoiser(unet, cond, scale, guide="output")(x, sigma)
    ones = torch.ones_like(scale)
    both_halves = guided_denoiser(unet, cond, ones, guide="denoised")(x, sigma)
    conditional = denoise_v_prediction(conditioned_network(unet, cond), x, sigma)
    return [
        KnownDifference(
            "guidance target",
            "mixes the two denoised estimates",
            "mixes the two network outputs",
            f"denoised {_sci(_rel(denoised, output))} rel. (round-off: D is affine in the output)",
            "guides the output",
        ),
        KnownDifference(
            "unconditional half at max guidance <= 1",
            "always runs both halves, scale 1",
            "runs the conditional half only",
            f"denoised {_sci(_rel(both_halves, conditional))} rel. (round-off)",
            "none (round-off only)",
        ),
    ]


@torch.no_grad()
def latent_dtype(s: Setup) -> KnownDifference:
    """Latents kept in float32 vs held in a half dtype between steps, over the run's steps."""
    cfg = s.model.config
    half = s.dtype if s.dtype != torch.float32 else HALF_LATENTS
    noise, cond, scale = sampler_inputs(s)
    sigmas = karras_sigmas(s.num_steps, cfg.sigma_min, cfg.sigma_max).to(s.device)
    denoiser = guided_denoiser(s.model.unet, cond, scale)
    start = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
    kept = sample_euler(denoiser, start, sigmas)
    rounded = start.to(half).float()
    for i in range(s.num_steps):  # Euler one step at a time, rounding between steps
        rounded = sample_euler(denoiser, rounded, sigmas[i : i + 2]).to(half).float()
    name = str(half).replace("torch.", "")
    return KnownDifference(
        "latent dtype between steps",
        "float32",
        "the pipeline's dtype (drawn in it and rounded after every step)",
        f"0 in float32 (exact); {_sci(_rel(rounded, kept))} rel. after {s.num_steps} steps with "
        f"{name} latents",
        "none (0 in float32)",
    )


@torch.no_grad()
def fps_convention(s: Setup) -> KnownDifference:
    """fps_id = fps - 1 on both sides; and how much an off-by-one fps_id would change."""
    cfg = s.model.config
    fps_id, motion, cond_aug = s.added_ids
    ours = embed_added(fps_id, motion, cond_aug, dim=cfg.unet.addition_embed_dim)
    ids = torch.tensor([fps_id, motion, cond_aug], device=s.device)
    theirs = s.reference.unet.add_time_proj(ids).reshape(1, -1)
    inputs = unet_inputs(s)
    x, c_noise, context = inputs["x"], inputs["c_noise"], inputs["context"]
    batch = x.shape[0]
    vector = embed_added(fps_id, motion, cond_aug, dim=cfg.unet.addition_embed_dim)
    shifted = embed_added(fps_id + 1, motion, cond_aug, dim=cfg.unet.addition_embed_dim)
    unet = s.model.unet
    right = unet(x, c_noise, context, vector.expand(batch, -1).to(s.device))
    off_by_one = unet(x, c_noise, context, shifted.expand(batch, -1).to(s.device))
    return KnownDifference(
        "fps conditioning",
        f"fps_id as given (script default {int(fps_id)})",
        f"fps - 1 (default fps {int(fps_id) + 1} -> {int(fps_id)})",
        f"vector {_sci(_rel(ours.to(s.device), theirs))} (same fps_id on both sides); conditioning "
        f"on fps instead of fps - 1 would change the UNet output by {_sci(_rel(off_by_one, right))} rel.",
        "none (same convention)",
    )


def uint8_frames(s: Setup) -> KnownDifference:
    """Truncation vs rounding of float frames, on a decoded random video."""
    cfg = s.model.config.vae
    h, w = s.latent_size
    z = torch.randn(1, s.num_frames, cfg.latent_channels, h, w, generator=s.generator(5))
    with torch.no_grad():
        frames = s.model.vae.decode((z / cfg.scaling_factor).to(s.device))[0]
    frames = ((frames.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()
    truncated, rounded = to_uint8(frames), to_uint8(frames, rounding=True)
    apart = np.mean(truncated != rounded)
    return KnownDifference(
        "float frames to uint8",
        "truncates: (x * 255).astype(uint8)",
        "rounds",
        f"{100 * apart:.0f}% of the values one level apart",
        "rounds",
    )


def measure_known_differences(s: Setup) -> list[KnownDifference]:
    """Measure every documented difference (module docstring) on the run's model and inputs."""
    return [
        norm_eps(s),
        clip_resize(s),
        scheduler_sigmas(s),
        *guidance(s),
        latent_dtype(s),
        fps_convention(s),
        uint8_frames(s),
    ]
