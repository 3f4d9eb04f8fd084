"""From one image to what the UNet is conditioned on, and the guided denoiser built from it.

SVD conditions every denoising step on three things made from the input image:
- `context` (B, 1, D): the CLIP embedding of the clean image, read by every cross-attention;
- `image_latent` (B, C, h, w): the VAE latent of the noise-augmented image (image + cond_aug *
  noise), concatenated to the noisy latent of every frame. It is NOT multiplied by the VAE scaling
  factor 0.18215 (neither reference does) and not scaled by c_in (it is concatenated after c_in);
- `vector` (B, A): sinusoidal embeddings of fps_id, motion_bucket_id and cond_aug.
The unconditional branch of classifier-free guidance has a zero embedding and a zero latent, and the
same vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .nn.embeddings import embed_added
from .sampling import Denoiser, apply_guidance, denoise_v_prediction

if TYPE_CHECKING:  # for the type hints only (model imports the networks; nothing here needs them)
    from .model import SVDModel
    from .unet import UNet

# A network of the preconditioned form: (c_in-scaled noisy latent, c_noise) -> output.
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Conditioning:
    """The conditioning of a batch of B videos (see the module docstring for the shapes)."""

    context: torch.Tensor
    image_latent: torch.Tensor
    vector: torch.Tensor

    def unconditional(self) -> Conditioning:
        """The branch guidance pushes away from: zero image embedding, zero image latent."""
        return Conditioning(
            torch.zeros_like(self.context), torch.zeros_like(self.image_latent), self.vector
        )

    @staticmethod
    def cat(first: Conditioning, second: Conditioning) -> Conditioning:
        """Stack two conditionings along the batch (first, then second)."""
        return Conditioning(
            torch.cat([first.context, second.context]),
            torch.cat([first.image_latent, second.image_latent]),
            torch.cat([first.vector, second.vector]),
        )


def encode_conditioning(
    model: SVDModel,
    image: torch.Tensor,
    cond_noise: torch.Tensor,
    fps_id: float | torch.Tensor,
    motion_bucket_id: float | torch.Tensor,
    cond_aug: float | torch.Tensor,
    clip_preprocess: str = "official",
    image_encoder_grad: bool = False,
) -> Conditioning:
    """Condition on `image` (B, 3, H, W) in [-1, 1].

    `cond_noise` (B, 3, H, W) is the standard-normal noise of the augmentation; the VAE encodes
    image + cond_aug * cond_noise, the CLIP encoder sees the clean image. fps_id, motion_bucket_id
    and cond_aug are numbers or (B,) tensors. Nothing records gradients, except the image encoder
    when `image_encoder_grad` is True (training it jointly, as svd_core.train does).
    """
    if cond_noise.shape != image.shape:
        raise ValueError(
            f"cond_noise must have the image's shape {tuple(image.shape)}, got {tuple(cond_noise.shape)}"
        )
    batch = image.shape[0]
    # float32, or float64 for float64 images (half precision would round cond_aug itself).
    column_dtype = torch.promote_types(image.dtype, torch.float32)
    cond_aug_column = torch.as_tensor(cond_aug, dtype=column_dtype).reshape(-1, 1, 1, 1)
    encoder_dtype = next(model.image_encoder.parameters()).dtype
    vae_dtype = next(model.vae.parameters()).dtype
    encoder = model.image_encoder
    previous, encoder.preprocess = encoder.preprocess, clip_preprocess
    # One network in memory at a time for a low-memory model (nothing happens for a plain one).
    try:
        grad = image_encoder_grad and torch.is_grad_enabled()
        with model.resident("image_encoder"), torch.set_grad_enabled(grad):
            context = encoder(image.to(encoder_dtype))[:, None]  # (B, 1, D): one token
    finally:
        encoder.preprocess = previous
    noisy_image = image + cond_aug_column.to(image.device) * cond_noise
    with torch.no_grad(), model.resident("vae_encoder"):
        image_latent = model.vae.encode(noisy_image.to(vae_dtype))
    vector = embed_added(
        fps_id, motion_bucket_id, cond_aug, dim=model.config.unet.addition_embed_dim
    )
    vector = vector.expand(batch, -1) if vector.shape[0] == 1 else vector
    if vector.shape[0] != batch:
        raise ValueError(f"conditioning values have {vector.shape[0]} entries for {batch} images")
    return Conditioning(context, image_latent, vector.to(image.device))


def conditioned_network(unet: UNet, cond: Conditioning) -> Network:
    """The UNet as a function of (c_in-scaled noisy latent (B, F, C, h, w), c_noise (B,)) only."""
    unet_dtype = next(unet.parameters()).dtype

    def network(scaled_x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        frames = scaled_x.shape[1]
        latent = cond.image_latent[:, None].expand(-1, frames, -1, -1, -1)  # (B, F, C, h, w)
        x = torch.cat([scaled_x, latent.to(scaled_x.dtype)], dim=2)  # (B, F, 2C, h, w)
        out = unet(
            x.to(unet_dtype),
            c_noise.to(unet_dtype),
            cond.context.to(unet_dtype),
            cond.vector.to(unet_dtype),
        )
        return out.to(scaled_x.dtype)

    return network


def guided_denoiser(
    unet: UNet,
    cond: Conditioning,
    scale: torch.Tensor,
    batched: bool = True,
    guide: str = "denoised",
) -> Denoiser:
    """The classifier-free-guided denoiser D(x, sigma) with a guidance scale per frame (F,).

    Built from the one preconditioning function, `sampling.denoise_v_prediction`. batched=True runs
    the unconditional and conditional branches as one batch of 2B (unconditional first, as the
    official code); False runs them one after the other, halving activation memory, with the same
    result. guide="denoised" mixes the two denoised predictions (official); guide="output" mixes
    the network outputs before preconditioning (diffusers); D is affine in the output with weights
    summing to one, so both agree up to round-off.
    """
    if guide not in ("denoised", "output"):
        raise ValueError(f"guide must be 'denoised' or 'output', got {guide!r}")
    uncond = cond.unconditional()
    if batched:  # one UNet call on the batch of 2B: the unconditional half first
        pair_network = conditioned_network(unet, Conditioning.cat(uncond, cond))
    else:
        uncond_net, cond_net = conditioned_network(unet, uncond), conditioned_network(unet, cond)

        def pair_network(scaled_x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            """The same on the batch of 2B, one branch (one half) after the other."""
            (x_uncond, x_cond), (c_uncond, c_cond) = scaled_x.chunk(2), c_noise.chunk(2)
            return torch.cat([uncond_net(x_uncond, c_uncond), cond_net(x_cond, c_cond)])

    def twice(t: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (2B, ...): once per branch
        return torch.cat([t, t])

    if guide == "output":

        def guided_network(scaled_x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            out_uncond, out_cond = pair_network(twice(scaled_x), twice(c_noise)).chunk(2)
            return apply_guidance(out_uncond, out_cond, scale)

        return lambda x, sigma: denoise_v_prediction(guided_network, x, sigma)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        both = denoise_v_prediction(pair_network, twice(x), twice(sigma))  # (2B, F, C, h, w)
        denoised_uncond, denoised_cond = both.chunk(2)
        return apply_guidance(denoised_uncond, denoised_cond, scale)

    return denoiser
