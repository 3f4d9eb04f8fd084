"""The spatio-temporal UNet of Stable Video Diffusion (official `VideoUNet`, diffusers
`UNetSpatioTemporalConditionModel`).

A 2D latent-diffusion UNet in which every block has a temporal twin:

- every res block is a spatial `ResBlock` followed by a temporal one (convolutions over frames);
- every transformer attends over the pixels of each frame, then over the frames of each pixel;
- each spatial/temporal pair is merged by a learned blend alpha * spatial + (1 - alpha) * temporal,
  alpha = sigmoid(mix_factor), and alpha = 1 for frames marked as independent images.

Frames are folded into the batch inside the network: (B, F, C, H, W) at the boundary, (B*F, C, H, W)
between blocks, as both references do. The temporal parts unfold them again. Every fold is an einops
pattern through `svd_core.nn.layout.rearrange` (einops' own, made cheap for torch.compile to trace).

Layout, for the default config (channels per level 320, 640, 1280, 1280):

    conv_in              8 -> 320 channels
    encoder level 0..3   2 x (res block [+ transformer]), then a stride-2 conv (not at level 3)
    middle               res block, transformer, res block
    decoder level 3..0   3 x (res block on [h, skip] [+ transformer]), then nearest x2 + conv
                         (not at level 0)
    norm_out, SiLU, conv_out   320 -> 4 channels

Transformers sit at the levels of `UNetConfig.attention_levels` (0, 1, 2 for SVD) and always in
the middle. The time embedding (from c_noise) plus the embedding of the added conditioning vector
(fps_id, motion_bucket_id, cond_aug) feeds every res block; the context (the CLIP image embedding)
feeds every cross-attention.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as checkpoint_fn

from .config import UNetConfig
from .nn import AlphaBlend, EmbeddingMLP, GroupNorm32, ResBlock, Upsample, timestep_embedding
from .nn.init import zero_module
from .nn.layout import rearrange
from .nn.transformer import SpatialTransformerBlock, TemporalTransformerBlock

# The transformers' input GroupNorm: eps 1e-6 in both references (official `Normalize`, diffusers
# `TransformerSpatioTemporalModel.norm`), unlike the res blocks' 1e-5.
TRANSFORMER_NORM_EPS = 1e-6


class Downsample(nn.Module):
    """A 3x3 convolution with stride 2: (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatioTemporalResBlock(nn.Module):
    """A spatial res block, its temporal twin, and the learned blend of the two.

    x (B*F, C_in, H, W), emb (B*F, E), image_only_indicator (B, F) -> (B*F, C_out, H, W).
    Official `VideoResBlock` (`time_stack`, `time_mixer`); diffusers `SpatioTemporalResBlock`.
    """

    def __init__(self, in_channels: int, out_channels: int, cfg: UNetConfig) -> None:
        super().__init__()
        common = dict(emb_channels=cfg.time_embed_dim, num_groups=cfg.num_groups, eps=cfg.norm_eps)
        self.spatial = ResBlock(in_channels, out_channels, **common)
        self.temporal = ResBlock(
            out_channels,
            out_channels,
            **common,
            temporal=True,
            kernel_size=cfg.temporal_kernel_size,
        )
        self.blend = AlphaBlend(cfg.merge_factor, cfg.merge_strategy)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, image_only_indicator: torch.Tensor
    ) -> torch.Tensor:
        num_frames = image_only_indicator.shape[1]
        spatial = self.spatial(x, emb)
        # (B*F, C, H, W) -> (B, C, F, H, W): the temporal convs slide along F
        temporal = rearrange(spatial, "(b f) c h w -> b c f h w", f=num_frames)
        temporal = self.temporal(temporal, rearrange(emb, "(b f) e -> b f e", f=num_frames))
        temporal = rearrange(temporal, "b c f h w -> (b f) c h w")
        return self.blend(spatial, temporal, image_only_indicator)


class SpatioTemporalTransformer(nn.Module):
    """GroupNorm, linear in, (spatial block, temporal block, blend) x depth, linear out, + input.

    x (B*F, C, H, W), context (B*F, N, D), image_only_indicator (B, F) -> (B*F, C, H, W).
    Official `SpatialVideoTransformer` with `use_linear`, `use_spatial_context` and `ff_in`;
    diffusers `TransformerSpatioTemporalModel`.

    Before each temporal block a sinusoidal embedding of the frame index (0..F-1, through a small
    MLP) is added. The temporal blocks cross-attend to the context of each clip's first frame (the
    official `use_spatial_context`: `context[::num_frames]`, one copy per pixel; here one copy per
    clip, which `Attention` broadcasts over the pixels); SVD repeats one context over the frames,
    so this is the same image embedding the spatial blocks see.
    """

    def __init__(self, channels: int, cfg: UNetConfig) -> None:
        super().__init__()
        heads, head_dim = channels // cfg.head_channels, cfg.head_channels
        self.max_period = cfg.max_time_embed_period
        self.norm = GroupNorm32(cfg.num_groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.spatial_blocks = nn.ModuleList(
            SpatialTransformerBlock(channels, heads, head_dim, cfg.context_dim)
            for _ in range(cfg.transformer_depth)
        )
        self.temporal_blocks = nn.ModuleList(
            TemporalTransformerBlock(channels, heads, head_dim, cfg.context_dim)
            for _ in range(cfg.transformer_depth)
        )
        self.frame_embed = EmbeddingMLP(channels, channels, hidden_dim=4 * channels)  # C -> 4C -> C
        self.blend = AlphaBlend(cfg.merge_factor, cfg.merge_strategy)
        # Zero at construction, so that a fresh transformer adds nothing (sgm's SpatialTransformer).
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, image_only_indicator: torch.Tensor
    ) -> torch.Tensor:
        batch, num_frames = image_only_indicator.shape
        height, width = x.shape[-2:]
        # (B*F, N, D) -> (B, 1, N, D): the first frame's context, broadcast over the pixel columns
        time_context = rearrange(context, "(b f) n d -> b f n d", f=num_frames)[:, :1]

        # (B*F, C, H, W) -> (B*F, H*W, C): tokens are pixels
        h = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))
        frame_index = torch.arange(num_frames, device=x.device)
        frame_emb = timestep_embedding(frame_index, h.shape[-1], self.max_period).to(h.dtype)
        frame_emb = self.frame_embed(frame_emb).repeat(batch, 1)[:, None, :]  # (B*F, 1, C)

        for spatial_block, temporal_block in zip(
            self.spatial_blocks, self.temporal_blocks, strict=True
        ):
            h = spatial_block(h, context)
            # (B*F, H*W, C) -> (B, H*W, F, C): tokens are frames, one sequence per pixel column
            t = rearrange(h + frame_emb, "(b f) s c -> b s f c", f=num_frames).contiguous()
            t = temporal_block(t, time_context)
            t = rearrange(t, "b s f c -> (b f) s c")
            h = self.blend(h, t, image_only_indicator)

        # (B*F, H*W, C) -> (B*F, C, H, W)
        h = rearrange(self.proj_out(h), "n (h w) c -> n c h w", h=height)
        return x + h


def _run(block: nn.Module, use_checkpoint: bool, *args: torch.Tensor) -> torch.Tensor:
    """Call `block`, through activation checkpointing when asked and gradients are recorded."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint_fn(block, *args, use_reentrant=False)
    return block(*args)


class EncoderLevel(nn.Module):
    """One resolution of the encoder: res blocks (each followed by a transformer where the level has
    attention), then a stride-2 downsample unless this is the deepest level.

    Returns the output (B*F, C, H', W') and the list of skip activations, one per block and one for
    the downsample, in order.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        cfg: UNetConfig,
        attention: bool,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            SpatioTemporalResBlock(in_channels if i == 0 else channels, channels, cfg)
            for i in range(cfg.num_res_blocks)
        )
        self.transformers = nn.ModuleList(
            SpatioTemporalTransformer(channels, cfg)
            for _ in range(cfg.num_res_blocks if attention else 0)
        )
        self.downsample = Downsample(channels) if downsample else None

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor,
        image_only_indicator: torch.Tensor,
        use_checkpoint: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, res_block in enumerate(self.res_blocks):
            h = _run(res_block, use_checkpoint, h, emb, image_only_indicator)
            if self.transformers:
                h = _run(self.transformers[i], use_checkpoint, h, context, image_only_indicator)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h)
            skips.append(h)
        return h, skips


class MiddleBlock(nn.Module):
    """Res block, transformer, res block at the deepest resolution (always with attention)."""

    def __init__(self, channels: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.res_in = SpatioTemporalResBlock(channels, channels, cfg)
        self.transformer = SpatioTemporalTransformer(channels, cfg)
        self.res_out = SpatioTemporalResBlock(channels, channels, cfg)

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor,
        image_only_indicator: torch.Tensor,
        use_checkpoint: bool = False,
    ) -> torch.Tensor:
        h = _run(self.res_in, use_checkpoint, h, emb, image_only_indicator)
        h = _run(self.transformer, use_checkpoint, h, context, image_only_indicator)
        return _run(self.res_out, use_checkpoint, h, emb, image_only_indicator)


class DecoderLevel(nn.Module):
    """One resolution of the decoder: num_res_blocks + 1 res blocks, each on the previous output
    concatenated with the latest encoder skip (each followed by a transformer where the level has
    attention), then nearest x2 + conv unless this is level 0.

    `skip_channels` lists the channels of the skips this level consumes, in the order it pops them.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: list[int],
        channels: int,
        cfg: UNetConfig,
        attention: bool,
        upsample: bool,
    ) -> None:
        super().__init__()
        inputs = [in_channels] + [channels] * (len(skip_channels) - 1)
        self.res_blocks = nn.ModuleList(
            SpatioTemporalResBlock(c_in + c_skip, channels, cfg)
            for c_in, c_skip in zip(inputs, skip_channels, strict=True)
        )
        self.transformers = nn.ModuleList(
            SpatioTemporalTransformer(channels, cfg)
            for _ in range(len(skip_channels) if attention else 0)
        )
        self.upsample = Upsample(channels) if upsample else None

    def forward(
        self,
        h: torch.Tensor,
        skips: list[torch.Tensor],
        emb: torch.Tensor,
        context: torch.Tensor,
        image_only_indicator: torch.Tensor,
        use_checkpoint: bool = False,
    ) -> torch.Tensor:
        """`skips` is the encoder's stack; this pops the entries it consumes from its end."""
        for i, res_block in enumerate(self.res_blocks):
            h = torch.cat([h, skips.pop()], dim=1)  # (B*F, C + C_skip, H, W)
            h = _run(res_block, use_checkpoint, h, emb, image_only_indicator)
            if self.transformers:
                h = _run(self.transformers[i], use_checkpoint, h, context, image_only_indicator)
        if self.upsample is not None:
            h = self.upsample(h)
        return h


def skip_channels(cfg: UNetConfig) -> list[list[int]]:
    """The channels of the encoder activations each decoder level concatenates, by level.

    The encoder keeps conv_in's output and the output of every res block and downsampler; the
    decoder, deepest level first, takes them back last-in first-out, num_res_blocks + 1 per level.
    Entry `level` lists the channels its blocks read, in block order. (The key maps walk the same
    bookkeeping: svd_core.loading.unet_maps.)
    """
    levels = cfg.level_channels
    last = len(levels) - 1
    kept = [cfg.model_channels]  # conv_in's output first
    for level, level_channels in enumerate(levels):
        kept += [level_channels] * (cfg.num_res_blocks + (level != last))
    consumed: list[list[int]] = [[] for _ in levels]
    for level in reversed(range(len(levels))):
        consumed[level] = [kept.pop() for _ in range(cfg.num_res_blocks + 1)]
    return consumed


class UNet(nn.Module):
    """The SVD denoiser network: (B, F, in_channels, h, w) -> (B, F, out_channels, h, w).

    Call as `unet(x, c_noise, context, vector, image_only_indicator=None)`:
      x: (B, F, in_channels, h, w), the scaled noisy latent and the image latent, concatenated on C;
         h and w must be multiples of `downscale_factor` (8 for SVD);
      c_noise: (B,) noise level input (0.25 * ln(sigma) in SVD), or a 0-d tensor for all clips;
      context: (B, N, context_dim), the image embedding, shared by the F frames;
      vector: (B, vector_dim), `embed_added(fps_id, motion_bucket_id, cond_aug)`;
      image_only_indicator: (B, F), 1 for frames to treat as independent images (the temporal
         paths are then blended out), default all zeros.

    `gradient_checkpointing=True` recomputes every res block and transformer in the backward pass
    instead of keeping its activations (training only; the result is the same).

    When no gradient is recorded (inference), the cross-attentions to a one-token context (SVD's
    image embedding) skip their queries and keys, and the feed-forwards work in place
    (`nn.attention.reads_one_key`, `nn.GEGLUFeedForward`): the same result up to float round-off.
    """

    def __init__(self, cfg: UNetConfig, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.gradient_checkpointing = gradient_checkpointing
        levels = cfg.level_channels
        last = len(levels) - 1

        self.time_embed = EmbeddingMLP(cfg.model_channels, cfg.time_embed_dim)
        self.vector_embed = EmbeddingMLP(cfg.vector_dim, cfg.time_embed_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.model_channels, 3, padding=1)

        self.encoder = nn.ModuleList()
        channels = cfg.model_channels
        for level, level_channels in enumerate(levels):
            attention = level in cfg.attention_levels
            self.encoder.append(
                EncoderLevel(channels, level_channels, cfg, attention, downsample=level != last)
            )
            channels = level_channels

        self.middle = MiddleBlock(channels, cfg)

        # Indexed by level like the encoder (decoder[i] works at encoder[i]'s resolution); forward
        # runs them deepest first.
        decoder = []
        consumed = skip_channels(cfg)
        for level in reversed(range(len(levels))):
            attention = level in cfg.attention_levels
            decoder.append(
                DecoderLevel(
                    channels, consumed[level], levels[level], cfg, attention, upsample=level > 0
                )
            )
            channels = levels[level]
        self.decoder = nn.ModuleList(reversed(decoder))

        self.norm_out = GroupNorm32(cfg.num_groups, cfg.model_channels, eps=cfg.norm_eps)
        # Zero at construction, so that a fresh UNet predicts zero (sgm's VideoUNet `out`).
        self.conv_out = zero_module(nn.Conv2d(cfg.model_channels, cfg.out_channels, 3, padding=1))

    @property
    def downscale_factor(self) -> int:
        """h and w must be multiples of this: 2 ** (number of levels - 1)."""
        return self.cfg.downscale_factor

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        context: torch.Tensor,
        vector: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c_noise, image_only_indicator = self._check_inputs(
            x, c_noise, context, vector, image_only_indicator
        )
        batch, num_frames = x.shape[:2]
        dtype = x.dtype
        checkpointing = self.gradient_checkpointing

        # (B,) -> (B, model_channels) sinusoids -> (B, E), E = 4 * model_channels
        t_emb = timestep_embedding(c_noise, self.cfg.model_channels).to(dtype)
        emb = self.time_embed(t_emb) + self.vector_embed(vector.to(dtype))  # (B, E)
        # One copy per frame, frames folded into the batch: (B, ...) -> (B*F, ...)
        emb = emb.repeat_interleave(num_frames, dim=0)
        context = context.to(dtype).repeat_interleave(num_frames, dim=0)

        h = self.conv_in(rearrange(x, "b f c h w -> (b f) c h w"))
        skips = [h]
        for level in self.encoder:
            h, level_skips = level(h, emb, context, image_only_indicator, checkpointing)
            skips += level_skips
        h = self.middle(h, emb, context, image_only_indicator, checkpointing)
        for level in reversed(self.decoder):
            h = level(h, skips, emb, context, image_only_indicator, checkpointing)

        out = self.conv_out(F.silu(self.norm_out(h)))
        return rearrange(out, "(b f) c h w -> b f c h w", b=batch)  # (B, F, out_channels, h, w)

    def _check_inputs(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        context: torch.Tensor,
        vector: torch.Tensor,
        image_only_indicator: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raise ValueError on wrong shapes; return c_noise as (B,) and the indicator as (B, F)."""
        cfg = self.cfg
        if x.ndim != 5:
            raise ValueError(
                f"UNet: x must be (B, F, C, h, w), got shape {tuple(x.shape)}; "
                "for a single clip add the batch dimension (x[None])"
            )
        batch, num_frames, channels, height, width = x.shape
        if channels != cfg.in_channels:
            raise ValueError(
                f"UNet: x has {channels} channels (shape {tuple(x.shape)}), expected "
                f"{cfg.in_channels} (noisy latent and image latent concatenated)"
            )
        factor = self.downscale_factor
        if height % factor or width % factor:
            raise ValueError(
                f"UNet: latent height and width must be multiples of {factor}, got "
                f"{height}x{width} (x shape {tuple(x.shape)})"
            )
        c_noise = torch.as_tensor(c_noise, device=x.device)
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(batch)
        if c_noise.shape != (batch,):
            raise ValueError(
                f"UNet: c_noise must be (B,) = ({batch},) or a scalar, got shape "
                f"{tuple(c_noise.shape)} for x of shape {tuple(x.shape)}"
            )
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != cfg.context_dim:
            raise ValueError(
                f"UNet: context must be (B, N, {cfg.context_dim}) with B = {batch}, got shape "
                f"{tuple(context.shape)} for x of shape {tuple(x.shape)}"
            )
        if vector.shape != (batch, cfg.vector_dim):
            raise ValueError(
                f"UNet: vector must be (B, {cfg.vector_dim}) with B = {batch}, got shape "
                f"{tuple(vector.shape)} for x of shape {tuple(x.shape)}; "
                "build it with svd_core.embed_added(fps_id, motion_bucket_id, cond_aug)"
            )
        if image_only_indicator is None:
            image_only_indicator = torch.zeros(batch, num_frames)
        elif image_only_indicator.shape != (batch, num_frames):
            raise ValueError(
                f"UNet: image_only_indicator must be (B, F) = ({batch}, {num_frames}), got shape "
                f"{tuple(image_only_indicator.shape)}"
            )
        return c_noise, image_only_indicator.to(x.device)
