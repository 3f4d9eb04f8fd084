"""The KL-f8 autoencoder of SVD: a 2D image encoder and a temporal (video) or plain 2D decoder.

Read top to bottom: resampling and attention blocks, the spatio-temporal res block of the video
decoder, the encoder, the decoder, and `VAE`, which validates inputs and chunks the decoding.

Which encoder encodes the conditioning frame. The official checkpoint holds two copies of the KL-f8
encoder: `first_stage_model.encoder` (no `quant_conv` beside it; the sampling code never calls it)
and a complete KL autoencoder under `conditioner.embedders.3.encoder` (sgm `AutoencoderKLModeOnly`
inside `VideoPredictionEmbedderWithEncoder`, `is_ae: True`). sgm encodes the noise-augmented
conditioning image with the latter: encoder, then `quant_conv`, then the posterior mode (its
regularizer is built with `sample=False`). diffusers' `AutoencoderKLTemporalDecoder` likewise has a
`quant_conv` and its pipeline takes `latent_dist.mode()`. So our `VAE` is encoder + `quant_conv`
(loaded from `conditioner.embedders.3.encoder`) and the decoder of `first_stage_model`.

`post_quant_conv` exists only in the image-decoder variant: the video decoder of `svd.yaml`
(sgm `AutoencodingEngine` + `VideoDecoder`) and diffusers' `AutoencoderKLTemporalDecoder` have none,
while `svd_image_decoder.yaml` builds sgm `AutoencoderKL`, which runs `post_quant_conv` before its
2D decoder (as diffusers' `AutoencoderKL` does).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import VAEConfig
from .nn import AlphaBlend, Attention, GroupNorm32, ResBlock, Upsample, zero_module
from .nn.layout import rearrange  # einops.rearrange, cheap for torch.compile to trace

# The temporal half of every video res block normalizes with eps 1e-5 (official `time_stack` is the
# UNet's ResBlock, whose GroupNorm32 keeps torch's default; diffusers passes temporal_eps=1e-5). The
# spatial half, the attention and the output norm use VAEConfig.norm_eps (1e-6). VAEConfig has no
# field for it yet.
TEMPORAL_NORM_EPS = 1e-5
# Both references clamp the posterior log-variance to this range before using it.
LOGVAR_RANGE = (-30.0, 20.0)
# encode() warns when an image value lies beyond this magnitude (e.g. a [0, 255] image); the
# noise-augmented conditioning image legitimately leaves [-1, 1] a little, so the limit is loose.
IMAGE_RANGE_WARN_LIMIT = 2.0


# ---- small blocks --------------------------------------------------------------------------------


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv: (N, C, H, W) -> (N, C, H/2, W/2).

    Both references pad one zero row at the bottom and one zero column on the right, not
    symmetrically.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels of a frame, plus the input: (N, C, H, W) -> same.

    The official block stores q, k, v and the output projection as 1x1 convs; ours are linears on
    (N, H*W, C), the same arithmetic (the key maps reshape the weights).
    """

    def __init__(self, channels: int, num_groups: int, eps: float) -> None:
        super().__init__()
        self.norm = GroupNorm32(num_groups, channels, eps=eps)
        self.attn = Attention(channels, heads=1, head_dim=channels, qkv_bias=True)
        # Zero at construction, so that a fresh block is the identity, as improved-diffusion's and
        # sgm's UNet AttentionBlock (`proj_out`); sgm's VAE AttnBlock keeps torch's init.
        zero_module(self.attn.to_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = rearrange(self.norm(x), "n c h w -> n (h w) c")
        h = self.attn(h)
        return x + rearrange(h, "n (h w) c -> n c h w", h=height, w=width)


class VideoResBlock(nn.Module):
    """A spatial res block, then a temporal one over its output, the two blended.

    (B*F, C_in, H, W) -> (B*F, C_out, H, W).

    Blend direction: alpha * temporal + (1 - alpha) * spatial with alpha = sigmoid(mix_factor), the
    opposite order of the UNet's blend (official `VideoResBlock`; diffusers reaches the same by
    `switch_spatial_to_temporal_mix=True`). The temporal block sees the frames of one video at a
    time: `num_frames` consecutive entries of the batch form one video.
    """

    def __init__(self, in_channels: int, out_channels: int, cfg: VAEConfig) -> None:
        super().__init__()
        self.spatial = ResBlock(
            in_channels, out_channels, num_groups=cfg.num_groups, eps=cfg.norm_eps
        )
        self.temporal = ResBlock(
            out_channels,
            num_groups=cfg.num_groups,
            eps=TEMPORAL_NORM_EPS,
            temporal=True,
            kernel_size=cfg.temporal_kernel_size,
        )
        self.blend = AlphaBlend(cfg.merge_factor, strategy="learned")

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        spatial = self.spatial(x)
        spatial = rearrange(spatial, "(b f) c h w -> b c f h w", f=num_frames)
        temporal = self.temporal(spatial)
        mixed = self.blend(temporal, spatial)  # alpha * temporal + (1 - alpha) * spatial
        return rearrange(mixed, "b c f h w -> (b f) c h w")


def _apply_res(block: nn.Module, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Run a decoder res block: video blocks need the frame count, plain 2D blocks do not."""
    return block(x, num_frames) if isinstance(block, VideoResBlock) else block(x)


class MidBlock(nn.Module):
    """Res block, self-attention, res block, at the lowest resolution (shape preserving).

    In the video decoder both res blocks are `VideoResBlock`s; the attention stays per frame
    (official `time_mode: conv-only`).
    """

    def __init__(self, channels: int, cfg: VAEConfig, video: bool) -> None:
        super().__init__()

        def res_block() -> nn.Module:
            if video:
                return VideoResBlock(channels, channels, cfg)
            return ResBlock(channels, num_groups=cfg.num_groups, eps=cfg.norm_eps)

        self.res_1 = res_block()
        self.attention = AttentionBlock(channels, cfg.num_groups, cfg.norm_eps)
        self.res_2 = res_block()

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        x = _apply_res(self.res_1, x, num_frames)
        x = self.attention(x)
        return _apply_res(self.res_2, x, num_frames)


# ---- encoder -------------------------------------------------------------------------------------


class EncoderLevel(nn.Module):
    """`num_res_blocks` res blocks at one resolution, then a downsample (not at the last level)."""

    def __init__(
        self, in_channels: int, out_channels: int, cfg: VAEConfig, downsample: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(
                in_channels if i == 0 else out_channels,
                out_channels,
                num_groups=cfg.num_groups,
                eps=cfg.norm_eps,
            )
            for i in range(cfg.num_res_blocks)
        )
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class Encoder(nn.Module):
    """The KL-f8 image encoder: (N, 3, H, W) in [-1, 1] -> (N, 2 * latent_channels, H/8, W/8).

    The output holds the posterior mean and log-variance, before `quant_conv`. Level i has
    base_channels * channel_mult[i] channels; every level but the last halves the resolution.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList(
            EncoderLevel(widths[max(i - 1, 0)], widths[i], cfg, downsample=i != last)
            for i in range(len(widths))
        )
        self.mid = MidBlock(widths[-1], cfg, video=False)
        self.norm_out = GroupNorm32(cfg.num_groups, widths[-1], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---- decoder -------------------------------------------------------------------------------------


class DecoderLevel(nn.Module):
    """`num_res_blocks + 1` res blocks at one resolution, then an upsample (except at level 0).

    Video res blocks in the temporal decoder, plain 2D res blocks in the image decoder.
    """

    def __init__(self, in_channels: int, out_channels: int, cfg: VAEConfig, upsample: bool) -> None:
        super().__init__()
        blocks = []
        for i in range(cfg.num_res_blocks + 1):
            c_in = in_channels if i == 0 else out_channels
            if cfg.temporal_decoder:
                blocks.append(VideoResBlock(c_in, out_channels, cfg))
            else:
                blocks.append(
                    ResBlock(c_in, out_channels, num_groups=cfg.num_groups, eps=cfg.norm_eps)
                )
        self.blocks = nn.ModuleList(blocks)
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        for block in self.blocks:
            x = _apply_res(block, x, num_frames)
        return x if self.upsample is None else self.upsample(x)


class Decoder(nn.Module):
    """The KL-f8 decoder: (B*F, latent_channels, h, w) -> (B*F, 3, 8h, 8w), about [-1, 1].

    `levels[i]` has base_channels * channel_mult[i] channels, as in the encoder; they run from the
    last (lowest resolution) to level 0. With `cfg.temporal_decoder` (SVD's video decoder) every res
    block is a `VideoResBlock` and the output conv is followed by a Conv3d over frames, kernel
    (3, 1, 1) (official `AE3DConv.time_mix_conv`); `num_frames` consecutive batch entries then form
    one video. Without it, this is the plain per-frame image decoder.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], cfg, video=cfg.temporal_decoder)
        self.levels = nn.ModuleList(
            DecoderLevel(widths[min(i + 1, last)], widths[i], cfg, upsample=i != 0)
            for i in range(len(widths))
        )
        self.norm_out = GroupNorm32(cfg.num_groups, widths[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)
        self.temporal_conv_out = None
        if cfg.temporal_decoder:
            k = cfg.temporal_kernel_size
            self.temporal_conv_out = nn.Conv3d(
                cfg.out_channels, cfg.out_channels, (k, 1, 1), padding=(k // 2, 0, 0)
            )

    def forward(self, z: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        # Channels-last from here on: every conv, norm and elementwise op keeps that layout (the
        # temporal blocks see it as channels-last 3D through their rearranges, and conv_over_frames
        # computes in it), so oneDNN's convs need no layout conversion of their input. On CPU with
        # 2 threads the decode is about 12% faster than in the standard layout
        # (benchmarks/results/profile-vae-decode-findings.txt).
        h = self.conv_in(z).contiguous(memory_format=torch.channels_last)
        h = self.mid(h, num_frames)
        for level in reversed(self.levels):
            h = level(h, num_frames)
        h = self.conv_out(F.silu(self.norm_out(h)))
        if self.temporal_conv_out is not None:
            h = rearrange(h, "(b f) c h w -> b c f h w", f=num_frames)
            h = self.temporal_conv_out(h)
            h = rearrange(h, "b c f h w -> (b f) c h w")
        return h.contiguous()


# ---- the autoencoder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentPosterior:
    """The encoder's diagonal Gaussian: mean and log-variance, each (B, C, h, w), unscaled."""

    mean: torch.Tensor
    logvar: torch.Tensor  # clamped to LOGVAR_RANGE, as both references do

    def mode(self) -> torch.Tensor:
        """The most likely latent (the mean): what SVD uses for the conditioning image."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A latent drawn from the posterior (for training), with the noise drawn on the generator's
        device (a CPU generator gives the same draws whatever the device of the latent)."""
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype
        )
        noise = noise.to(self.mean.device)
        return self.mean + torch.exp(0.5 * self.logvar) * noise


class VAE(nn.Module):
    """SVD's KL-f8 autoencoder: 2D encoder + `quant_conv`, and the temporal (or per-frame) decoder.

    `encode` is the conditioning-image path (official `conditioner.embedders.3.encoder`: encoder,
    then quant_conv, then the posterior mode); `decode` is official `first_stage_model.decoder`.
    Latents are unscaled at this boundary: the diffusion works on latent * cfg.scaling_factor, and
    callers divide by it before `decode` (the conditioning latent is never scaled, in either
    reference).
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        # Only the image-decoder variant (sgm / diffusers AutoencoderKL) has a post_quant_conv.
        self.post_quant_conv = None
        if not cfg.temporal_decoder:
            self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    # ---- encoding ------------------------------------------------------------------------------

    def encode_posterior(self, image: torch.Tensor) -> LatentPosterior:
        """(B, 3, H, W) in [-1, 1], H, W multiples of 8 -> mean, logvar, each (B, 4, H/8, W/8)."""
        self._check_image(image)
        moments = self.quant_conv(self.encoder(image))  # (B, 2 * latent_channels, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return LatentPosterior(mean, logvar.clamp(*LOGVAR_RANGE))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> posterior mode (B, 4, H/8, W/8), unscaled."""
        return self.encode_posterior(image).mode()

    # ---- decoding ------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """(B, F, 4, h, w) unscaled latents -> (B, F, 3, 8h, 8w) frames in about [-1, 1], unclamped.

        chunk_size: decode this many frames of every video at a time (all B videos together); the
        temporal layers of the video decoder then see only the frames of their chunk, so the result
        depends on the chunking (at its edges), and memory grows with B * chunk_size, not with F.
        None decodes all F frames at once. Both references chunk differently: sgm
        (`en_and_decode_n_samples_a_time`) and diffusers' pipeline (`decode_chunk_size`) cut the
        flattened (B*F) frame axis, so with B > 1 and F not a multiple of the chunk, one of their
        chunks spans two videos and its temporal convs mix them. For B = 1 (or F a multiple of
        chunk_size) ours is the same as theirs. The image decoder decodes frames independently;
        chunking only saves memory.
        """
        self._check_latent(z, chunk_size)
        batch, num_frames = z.shape[:2]
        step = num_frames if chunk_size is None else min(chunk_size, num_frames)
        chunks = []
        for start in range(0, num_frames, step):
            chunk = z[:, start : start + step]  # (B, f, C, h, w)
            frames_in_chunk = chunk.shape[1]
            h = rearrange(chunk, "b f c h w -> (b f) c h w")
            if self.post_quant_conv is not None:
                h = self.post_quant_conv(h)
            frames = self.decoder(h, num_frames=frames_in_chunk)  # (B*f, 3, H, W)
            chunks.append(rearrange(frames, "(b f) c h w -> b f c h w", b=batch))
        return torch.cat(chunks, dim=1)

    # ---- input checks --------------------------------------------------------------------------

    def _check_image(self, image: torch.Tensor) -> None:
        cfg = self.cfg
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"VAE.encode expects an image batch (B, {cfg.in_channels}, H, W), got {shape}; "
                "add a batch dimension with image[None] for a single image"
            )
        if image.shape[1] != cfg.in_channels:
            raise ValueError(
                f"VAE.encode expects {cfg.in_channels} channels in dim 1 of (B, C, H, W), "
                f"got shape {tuple(image.shape)}"
            )
        if not image.is_floating_point():
            raise ValueError(
                f"VAE.encode expects a floating-point image in [-1, 1], got dtype {image.dtype}; "
                "convert a uint8 image with x.float() / 127.5 - 1"
            )
        factor = cfg.downscale_factor
        height, width = image.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"VAE.encode needs height and width divisible by {factor}, got {height}x{width}; "
                f"resize or crop to e.g. {height // factor * factor}x{width // factor * factor}"
            )
        if image.numel() and not image.is_meta:
            low, high = image.min().item(), image.max().item()
            if max(-low, high) > IMAGE_RANGE_WARN_LIMIT:
                warnings.warn(
                    f"VAE.encode expects images in [-1, 1], got values in [{low:.3g}, {high:.3g}]; "
                    "convert a [0, 255] image with x / 127.5 - 1",
                    stacklevel=3,
                )

    def _check_latent(self, z: torch.Tensor, chunk_size: int | None) -> None:
        cfg = self.cfg
        if not isinstance(z, torch.Tensor) or z.ndim != 5:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(
                f"VAE.decode expects latents (B, F, {cfg.latent_channels}, h, w), got {shape}; "
                "for single images add a frame axis with z[:, None]"
            )
        if z.shape[2] != cfg.latent_channels:
            raise ValueError(
                f"VAE.decode expects {cfg.latent_channels} latent channels in dim 2 of "
                f"(B, F, C, h, w), got shape {tuple(z.shape)}"
            )
        if z.shape[1] < 1:
            raise ValueError(f"VAE.decode got no frames: shape {tuple(z.shape)}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"chunk_size must be None (all frames at once) or an int >= 1, got {chunk_size!r}"
            )
